"""Is a model compacted, and the compacted copy `spa.save_task` needs (`spa.compacted`)."""

from __future__ import annotations

from torch import nn

from spa.adapters.protocols import ChannelMasked
from spa.adapters.sharing import shared_copy
from spa.pruning.compaction import compact
from spa.pruning.module_masks import module_mask, parameter_masks


def has_pruned_channels(model: nn.Module) -> bool:
    """True if a channel-masked adapter's mask or a `spa.pruning` hook mask removes a channel."""
    for module in model.modules():
        masks = [module_mask(module, "out"), module_mask(module, "in")]
        masks += list(parameter_masks(module).values())
        if isinstance(module, ChannelMasked):
            masks += [module.out_mask, module.in_mask]
        if any(mask is not None and not bool(mask.all()) for mask in masks):
            return True
    return False


def has_module_masks(model: nn.Module) -> bool:
    """True if any module carries a `spa.pruning` hook mask (on a norm, a head, ...)."""
    return any(
        module_mask(m, side) is not None for m in model.modules() for side in ("out", "in")
    ) or any(parameter_masks(m) for m in model.modules())


def compacted(model: nn.Module, example_inputs: object = None) -> nn.Module:
    """`model` itself if no channel is masked out, else a compacted copy (`model` is unchanged).

    The copy is what `spa.save_task` takes: `spa.save_task(spa.compacted(model), path,
    base_model=base)`. SPLoPA block masks are not channel masks and stay as they are.

    Args:
        model: a trained task model, possibly with masked channels.
        example_inputs: optional batch on which the compacted copy is run as a check.

    Returns:
        A model without masked channels, with the masked model's outputs.
    """
    if not has_pruned_channels(model):
        return model
    # The copy shares the frozen weights (compaction slices into new tensors and writes into
    # none): the kept weights are the only new memory (issue 22).
    return compact(shared_copy(model, frozen_only=True), example_inputs)
