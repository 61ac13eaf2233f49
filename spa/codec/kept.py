"""Which base positions compaction kept in each narrowed module tensor (issue 22).

`spa.compact` narrows the tensors of modules that are not adapter layers (embeddings and norms
of a pruned hidden size, an LM head, a layer left out of adaptation) with their hook masks. It
records here, per module and tensor key, the axis it narrowed and the kept positions of the
*base* tensor (composed over repeated compactions), so that the bundle writer reads them
instead of searching the base for the kept slices, and can write a tensor it never holds (a
`meta` placeholder of `spa.compacted_for_save`). The record is a private module attribute: it
is copied with the module and not a `transformers` config value nor a bundle attribute.
A tensor narrowed on two axes has no record (a bundle stores it whole). This module writes the
records; `spa.codec.records.recorded` reads them (on the save path).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from spa.codec.records import KEPT_ATTRIBUTE as _ATTRIBUTE
from spa.codec.records import KEPT_UNKNOWN as _UNKNOWN


def record(module: nn.Module, key: str, axis: int, kept: torch.Tensor) -> None:
    """Note that tensor `key` of `module` kept the positions `kept` (of its current size) on
    `axis`, composing with what an earlier compaction recorded."""
    records = dict(getattr(module, _ATTRIBUTE, {}))  # a copy: structural copies share the dict
    kept = kept.detach().to("cpu", torch.int64).flatten()
    earlier = records.get(key)
    if earlier == _UNKNOWN or (earlier is not None and earlier[0] != axis):
        records[key] = _UNKNOWN
    else:
        records[key] = (axis, kept if earlier is None else earlier[1][kept])
    setattr(module, _ATTRIBUTE, records)


def _kept(size: int, removed: Sequence[int]) -> torch.Tensor:
    keep = torch.ones(size, dtype=torch.bool)
    keep[torch.as_tensor(list(removed), dtype=torch.long)] = False
    return keep.nonzero().flatten()


def shapes(module: nn.Module) -> dict[str, torch.Size]:
    """The shapes of the module's own parameters and buffers (taken before compaction)."""
    tensors = {**module._parameters, **module._buffers}
    return {key: t.shape for key, t in tensors.items() if t is not None}


def record_removed(
    module: nn.Module,
    before: dict[str, torch.Size],
    out_removed: Sequence[int],
    in_removed: Sequence[int],
) -> None:
    """Record every tensor of `module` that removing these channels narrowed on one axis.

    The removed positions of that axis are those of the side whose count matches the shrink
    (the output side first); a tensor narrowed on two axes is marked as not one axis's.

    Args:
        module: the module, after `spa.pruning.groups.remove_channels`.
        before: `shapes(module)` taken before.
        out_removed: the output channels removed.
        in_removed: the input channels removed.
    """
    for key, shape in shapes(module).items():
        old = before.get(key)
        if old is None or old == shape or len(old) != len(shape):
            continue
        axes = [d for d in range(len(shape)) if shape[d] != old[d]]
        shrink = old[axes[0]] - shape[axes[0]]
        side = out_removed if shrink == len(out_removed) else in_removed
        if len(axes) != 1 or shrink != len(side):
            setattr(module, _ATTRIBUTE, {**getattr(module, _ATTRIBUTE, {}), key: _UNKNOWN})
            continue
        record(module, key, axes[0], _kept(old[axes[0]], side))
