"""A traced group is kept only if removing its channels compacts into the masked model.

Torch-Pruning's graph does not see every coupling a model makes in its own code: SegFormer's
sequence reduction reshapes a conv's output with the *input's* channel count, T5 adds its model
input into the residual stream, wav2vec2's positional conv is weight-normalised. Masks on such a
group give a masked model that its compacted form does not reproduce (or cannot even run). So,
before any mask is applied to the user's model, `keep_compactable` removes one channel of every
traced group on a copy, compacts it and compares it with the masked copy on the example batch;
if they differ, it bisects to the groups at fault and leaves them out with a `SpaWarning` naming
their root and the failure. Cost: one copy of the model per trial (1 + about 2 log2(groups) per
group at fault); described families (`spa.pruning.units`) never need it.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from spa._batch import call_model
from spa.adapters.protocols import IN_MASK, OUT_MASK
from spa.errors import SpaWarning
from spa.pruning.channel_group import ChannelGroup


def _one_channel_masks(groups: Sequence[ChannelGroup]) -> dict:
    """Masks removing the first kept channel of every group with more than one kept."""
    masks: dict = {}
    for group in groups:
        alive = [c for c in range(group.size) if group.kept[c]]
        if len(alive) < 2:
            continue
        for member in group.members:
            key = IN_MASK if member.role == "in" else OUT_MASK
            mask = masks.setdefault(member.name, {}).setdefault(
                key, torch.ones(member.mask_size, dtype=torch.bool)
            )
            for position, channel in zip(member.positions, member.channels):
                if channel == alive[0]:
                    mask[position] = False
    return masks


def _failure(model: nn.Module, groups: Sequence[ChannelGroup], example_inputs) -> str | None:
    """Why compacting `groups` (one channel each) does not give the masked copy, or None."""
    from spa.pruning.compaction import compact
    from spa.pruning.masking import apply_masks

    trial = copy.deepcopy(model).eval()
    running: list[str] = []
    try:
        with torch.no_grad():
            apply_masks(trial, _one_channel_masks(groups))
            masked = call_model(trial, example_inputs)
            compact(trial)
            with _tracking(trial, running):
                compacted = call_model(trial, example_inputs)
    except Exception as error:  # noqa: BLE001 - any failure means: this group cannot be pruned
        where = f" in {running[-1]}" if running and running[-1] else ""
        return f"{type(error).__name__}{where}: {str(error).splitlines()[0][:160]}"
    masked, compacted = _tensor(masked), _tensor(compacted)
    if masked is None or compacted is None or masked.shape != compacted.shape:
        return "the compacted model's output has another shape"
    scale = masked.abs().max().clamp_min(1e-6)
    if not bool(((compacted - masked).abs().max() / scale) <= 1e-4):
        return "the compacted model computes other outputs than the masked one"
    return None


@contextlib.contextmanager
def _tracking(model: nn.Module, running: list[str]):
    """Keep `running` as the stack of modules whose forward is under way, so after a failure
    its last entry names the innermost module that failed (e.g. a norm sliced unlike its
    input)."""

    def enter(name: str):
        return lambda *_: running.append(name)  # returns None: the input stays

    def leave(*_) -> None:  # returns None: the output stays
        running.pop()

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _tensor(output) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def keep_compactable(
    model: nn.Module, groups: list[ChannelGroup], example_inputs
) -> list[ChannelGroup]:
    """The traced groups whose pruning compacts into the masked model; the rest are warned
    about (naming the root and the failure) and left out. `model` itself is not changed.

    Args:
        model: the adapted model the groups were traced from.
        groups: the traced groups.
        example_inputs: the batch they were traced with.

    Returns:
        The groups that passed, in their order.
    """
    bad: list[tuple[ChannelGroup, str]] = []

    def search(subset: list[ChannelGroup], known: str | None = None) -> None:
        failure = known if known is not None else _failure(model, subset, example_inputs)
        if failure is None:
            return
        if len(subset) == 1:
            bad.append((subset[0], failure))
            return
        middle = len(subset) // 2
        search(subset[:middle])
        search(subset[middle:])

    if groups:
        search(list(groups))
    for group, failure in bad:
        warnings.warn(
            f"channel group rooted at {group.root} is not pruned: removing its channels does "
            f"not compact into the masked model ({failure}); a coupling the traced graph does "
            "not show (describe the model with a spa.families.Family)",
            SpaWarning,
            stacklevel=3,
        )
    dropped = {id(group) for group, _ in bad}
    return [group for group in groups if id(group) not in dropped]
