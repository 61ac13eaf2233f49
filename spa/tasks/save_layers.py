"""The layer and module records of a bundle: what a compacted task model changed, per module.

The modules come paired with their base modules (`spa.tasks.save_checks.check_save`). Adapter
layers are written by their kind's codec (`spa.tasks.codecs.codec_for`); every other
module records the tensors and shape attributes that differ from the base module. A base tensor
that pruning only narrowed (an embedding table of a pruned hidden size) is stored as its kept
indices; an eval-mode BatchNorm can be folded to its per-channel scale and shift.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from spa.adapters.protocols import AdapterLayer
from spa.codec.protocols import Entry
from spa.codec.records import (
    attribute_changes,
    direct_tensors,
    narrowing,
    recorded,
    same_as_kept,
    same_tensor,
)
from spa.codec.writer import BundleWriter
from spa.errors import ConfigError
from spa.tasks.codecs import codec_for
from spa.tasks.save_checks import ModulePair

NormStatistics = Literal["folded", "exact"]
_NORM_KEYS = ("weight", "bias", "running_mean", "running_var")


def record_layers(pairs: list[ModulePair], writer: BundleWriter) -> list[Entry]:
    """Write every adapter layer with its kind's codec; return their entries."""
    return [
        codec_for(pair.module.kind).save(pair.path, pair.module, pair.base, writer)[0]
        for pair in pairs
        if isinstance(pair.module, AdapterLayer)
    ]


def record_modules(
    pairs: list[ModulePair], writer: BundleWriter, norm_statistics: NormStatistics
) -> list[Entry]:
    """Write what every non-adapter module changed; return the entries of changed modules."""
    entries = []
    for pair in pairs:
        name, module, base = pair.path, pair.module, pair.base
        if isinstance(module, AdapterLayer):
            continue
        if norm_statistics == "folded" and _is_foldable(module) and _is_foldable(base):
            entry = _record_folded(name, module, base, writer)
        else:
            entry = _record_module(name, module, base, writer)
        if entry is not None:
            entries.append(entry)
    return entries


def _fold_batch_norm(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode batch norm as `x * scale + shift` (what PyTorch's inference kernel computes)."""
    inverse_std = 1 / torch.sqrt(module.running_var + module.eps)
    scale = module.weight.detach() * inverse_std
    return scale, module.bias.detach() - module.running_mean * scale


def _is_foldable(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.modules.batchnorm._BatchNorm)
        and module.affine
        and module.running_mean is not None
    )


def _new_entry(name: str, module: nn.Module, base: nn.Module) -> Entry:
    """The entry's path, changed attributes and parameters set to None (that the base has)."""
    entry: Entry = {"path": name}
    if attributes := attribute_changes(module, base):
        entry["attributes"] = attributes
    base_tensors = direct_tensors(base)
    parameters = module._parameters
    removed = [k for k in base_tensors if k in parameters and parameters[k] is None]
    if removed:
        entry["none"] = removed
    return entry


def _record_folded(
    name: str, module: nn.Module, base: nn.Module, writer: BundleWriter
) -> Entry | None:
    """A changed eval-mode BatchNorm as its per-channel scale and shift (None if unchanged)."""
    entry = _new_entry(name, module, base)
    tensors, base_tensors = direct_tensors(module), direct_tensors(base)
    unchanged = all(same_tensor(tensors[k][1], base_tensors[k][1]) for k in _NORM_KEYS)
    if unchanged and "attributes" not in entry:
        return None
    writer.add(f"modules.{name}.folded", torch.stack(_fold_batch_norm(module)))  # (2, C)
    entry["folded_norm"] = True
    return entry


def _record_module(
    name: str, module: nn.Module, base: nn.Module, writer: BundleWriter
) -> Entry | None:
    """Record the tensors and shape attributes of a module that differ from `base`."""
    entry = _new_entry(name, module, base)
    base_tensors = direct_tensors(base)
    changed, narrowed = {}, {}
    for key, (role, tensor) in direct_tensors(module).items():
        base_tensor = base_tensors.get(key, (None, None))[1]
        if same_tensor(tensor, base_tensor):
            continue
        if (found := _narrowing(name, module, key, tensor, base_tensor)) is not None:
            writer.add_exact(f"modules.{name}.{key}", found[1])  # kept base indices only
            narrowed[key] = [role, found[0]]
            continue
        writer.add(f"modules.{name}.{key}", tensor)
        changed[key] = [role, str(tensor.dtype).removeprefix("torch.")]
    if changed:
        entry["tensors"] = changed
    if narrowed:
        entry["narrowed"] = narrowed
    return entry if len(entry) > 1 else None


def _narrowing(
    name: str, module: nn.Module, key: str, tensor: torch.Tensor, base: torch.Tensor | None
) -> tuple[int, torch.Tensor] | None:
    """`(axis, kept)` if `tensor` is the base tensor narrowed on one axis: the positions
    compaction recorded (a `meta` placeholder of `spa.compacted_for_save` is the base's own
    values by construction), else found by searching the base (a model compacted elsewhere)."""
    found = recorded(module, key)
    if found is None or base is None or tensor.dim() < 2 or tensor.dtype != base.dtype:
        if tensor.is_meta:
            raise ConfigError(
                f"save_task: module {name!r}: tensor {key!r} is a meta placeholder that "
                "compaction did not narrow on one axis; save spa.compacted(model) instead"
            )
        return narrowing(tensor, base)
    return found if tensor.is_meta or same_as_kept(tensor, base, *found) else None
