"""Is a model compacted, and the compacted copy `spa.save_task` needs (`spa.compacted`)."""

from __future__ import annotations

import torch
from torch import nn

from spa.adapters.protocols import AdapterLayer, ChannelMasked
from spa.adapters.registry import ADAPTER_KINDS
from spa.adapters.sharing import shared_copy
from spa.adapters.transposed import linear_view
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


def _is_base_storage(weight: torch.Tensor, base_weight: torch.Tensor | None) -> bool:
    """True if `weight` is exactly the base tensor's memory (same storage, offset, layout)."""
    return (
        base_weight is not None
        and not weight.requires_grad
        and weight.data_ptr() == base_weight.data_ptr()
        and weight.shape == base_weight.shape
        and weight.stride() == base_weight.stride()
        and weight.dtype == base_weight.dtype
    )


def _reads_meta(layer: nn.Module) -> bool:
    """True if the codec of `layer`'s adapter kind reads a `meta` base weight as the base's."""
    kind = ADAPTER_KINDS.get(layer.kind) if layer.kind in ADAPTER_KINDS else None
    return kind is not None and kind.codec is not None and kind.codec.meta_base_weights


def _frozen_placeholders(model: nn.Module, base_model: nn.Module) -> None:
    """Put a `meta` tensor in place of every channel-masked layer's frozen base weight that is
    the base model's own storage (the copy's layers are its own; the original is untouched)."""
    base_modules = dict(base_model.named_modules())
    for name, module in model.named_modules():
        base = base_modules.get(name)
        if not isinstance(module, ChannelMasked) or base is None or not _reads_meta(module):
            continue
        weight = module.base.weight
        if _is_base_storage(weight, getattr(linear_view(base), "weight", None)):
            placeholder = torch.empty_like(weight, device="meta")
            module.base.weight = nn.Parameter(placeholder, requires_grad=False)


def _removes(mask: torch.Tensor | None) -> bool:
    return mask is not None and not bool(mask.all())


def _narrowed_placeholders(
    model: nn.Module, base_model: nn.Module
) -> dict[int, tuple[nn.Parameter, nn.Parameter]]:
    """Put a `meta` tensor in place of every base-storage parameter of a module outside the
    adapter layers that compaction will narrow on one axis (its hook masks remove channels on
    one side only: an embedding or LM head of a pruned hidden size); tied parameters stay tied.

    Returns:
        Per placeholder's `id`, the placeholder (held, so that no new tensor takes its `id`)
        and the parameter it stands in for (to put back where compaction did not narrow it:
        a bias beside an input-side mask).
    """
    base_modules = dict(base_model.named_modules())
    placeholders: dict[int, nn.Parameter] = {}
    stands_for: dict[int, tuple[nn.Parameter, nn.Parameter]] = {}
    for name, module in model.named_modules():
        base = base_modules.get(name)
        sides = [_removes(module_mask(module, "out")), _removes(module_mask(module, "in"))]
        sides.append(any(_removes(mask) for mask in parameter_masks(module).values()))
        if base is None or isinstance(module, AdapterLayer) or sum(sides) != 1:
            continue
        for key, parameter in module._parameters.items():
            if parameter is None or not _is_base_storage(parameter, getattr(base, key, None)):
                continue
            if id(parameter) not in placeholders:
                meta = torch.empty_like(parameter, device="meta")
                placeholder = placeholders[id(parameter)] = nn.Parameter(meta, requires_grad=False)
                stands_for[id(placeholder)] = (placeholder, parameter)
            module._parameters[key] = placeholders[id(parameter)]
    return stands_for


def _put_back(model: nn.Module, stands_for: dict[int, tuple[nn.Parameter, nn.Parameter]]) -> None:
    """The base's own parameter again wherever compaction left a placeholder as it was."""
    for module in model.modules():
        for key, parameter in module._parameters.items():
            placeholder, original = stands_for.get(id(parameter), (None, None))
            if parameter is not None and parameter is placeholder:
                module._parameters[key] = original


def compacted_for_save(model: nn.Module, base_model: nn.Module) -> nn.Module:
    """A compacted copy of `model` for `spa.save_task` only, that allocates no base weight.

    A bundle does not store the frozen base weights of adapter layers, only which of their
    channels are kept, so this copy holds a `meta` placeholder for each frozen base weight
    that is `base_model`'s own storage (same `data_ptr`, shape and strides) and compaction
    slices the placeholders instead of the weights (layers of kinds whose codec reads them,
    `LayerCodec.meta_base_weights`; others are sliced as `spa.compacted` slices them); so do
    the frozen base tensors that hook masks narrow on one axis (the token embedding and LM head
    of a pruned hidden size), whose kept positions compaction records (`spa.codec.kept`): saving
    then needs the base and the small trained tensors only, not the kept base weights as well
    (issue 22). The copy cannot run: use `spa.compacted` for a model to evaluate. `model` is
    unchanged.

    Args:
        model: a trained task model, possibly with masked channels, sharing `base_model`'s
            frozen weights (`spa.adapters.task_model`).
        base_model: the plain base model passed to `spa.save_task`.

    Returns:
        `model` itself if no channel is masked out, else the placeholder-holding compacted copy;
        `spa.save_task(compacted_for_save(model, base), path, base_model=base)` writes the same
        bytes as `spa.save_task(spa.compacted(model), path, base_model=base)`.
    """
    if not has_pruned_channels(model):
        return model
    copy = shared_copy(model, frozen_only=True)
    _frozen_placeholders(copy, base_model)
    stands_for = _narrowed_placeholders(copy, base_model)
    compact(copy)
    _put_back(copy, stands_for)
    return copy
