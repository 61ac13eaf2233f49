"""`compact(model)`: physically remove masked channels so tensors get smaller.

Pruning steps only set masks (training continues on the masked model); `compact` is the separate
deployment step. It is module-local: every adapter layer drops the rows/columns its masks
remove (`ChannelMasked.select_channels`, through the Torch-Pruning pruner registered in
`spa.pruning.groups`), and every hook-masked module (norms, the head, excluded layers) is sliced
with Torch-Pruning's own pruning functions. `apply_masks` keeps masks consistent across coupled
modules, so the result computes exactly what the masked model computes.
"""

from __future__ import annotations

import torch
from torch import nn

from spa._batch import call_model
from spa._checks import require_module
from spa.adapters.modules import narrow_tensor
from spa.adapters.protocols import ChannelMasked
from spa.codec import kept as kept_positions
from spa.errors import SpaError
from spa.families import describe, sync_attributes
from spa.pruning.groups import remove_channels
from spa.pruning.module_masks import (
    module_mask,
    parameter_mask_dim,
    parameter_masks,
    remove_module_masks,
)
from spa.pruning.traced_heads import head_counts_before, sync_head_counts


def _removed(mask: torch.Tensor | None) -> list[int]:
    return [] if mask is None else (~mask).nonzero().flatten().tolist()


def _slice_parameter(module: nn.Module, name: str, mask: torch.Tensor) -> None:
    """Keep only the masked-in channels of the bare per-channel parameter/buffer `name`."""
    tensor = {**module._buffers, **module._parameters}[name]
    kept, axis = mask.flatten().nonzero().flatten(), parameter_mask_dim(mask, tensor)
    narrow_tensor(module, name, kept, axis)
    kept_positions.record(module, name, axis, kept)
    if isinstance(module, nn.Embedding) and name == "weight":
        module.embedding_dim = module.weight.shape[1]  # a hidden-size slice (spa.families.stream)


def _tied_parameters(model: nn.Module) -> list[list[tuple[nn.Module, str]]]:
    """The owners of every parameter held by more than one module (tied embeddings)."""
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for name, parameter in module._parameters.items():
            if parameter is not None:
                owners.setdefault(id(parameter), []).append((module, name))
    return [found for found in owners.values() if len(found) > 1]


def _retie(tied: list[list[tuple[nn.Module, str]]]) -> None:
    """Share again what compaction sliced apart (each owner sliced its own copy), where the
    slices are equal, as a tied LM head and token embedding are after hidden-size pruning."""
    for owners in tied:
        first = owners[0][0]._parameters[owners[0][1]]
        rest = [module._parameters[name] for module, name in owners[1:]]
        # On the meta device (planning, spa.pruning.plan) equal shapes are all there is to see.
        if all(p.shape == first.shape and (p.is_meta or torch.equal(p, first)) for p in rest):
            for module, name in owners[1:]:
                module._parameters[name] = first


def compact(model: nn.Module, example_inputs=None) -> nn.Module:
    """Remove masked channels physically, in place; the outputs stay those of the masked model.

    After compaction every mask is all-ones, norm layers have updated `num_features` /
    `normalized_shape` (embeddings their `embedding_dim`), parameters tied before (an LM head
    and its token embedding) are tied again, modules of described transformer families hold
    their new head and neuron counts (`spa.families.sync_attributes`), and every channel-masked
    layer's `out_indices` / `in_indices` still name the channels of the original base layer each
    kept row/column comes from, so a task can be rebuilt from the shared base weights; the
    positions every other narrowed tensor kept are recorded too (`spa.codec.kept`).
    `spa.fuse` then gives an ordinary PyTorch model with fewer parameters and FLOPs.

    Args:
        model: a masked adapted model (see `apply_masks`).
        example_inputs: optional batch; if given, the compacted model is run on it as a check.

    Returns:
        `model`, compacted.

    Raises:
        SpaError: if the compacted model fails on `example_inputs` (inconsistent masks).
    """
    require_module(model, "compact: model")
    tied = _tied_parameters(model)
    heads = head_counts_before(model) if describe(model) is None else []  # traced attention
    # By name, not a list of modules: a list would keep every replaced base layer (and its
    # full-size weight) alive until the end, so compaction would need the old and the new
    # weights at once. Adapter layers first: each frees its base weight as it shrinks, so the
    # largest tensors outside them (the token embedding and LM head of a pruned hidden size)
    # are sliced when that memory is free again (issue 22). Compaction is module-local.
    names = [name for name, _ in model.named_modules()]
    masked = {name for name, module in model.named_modules() if isinstance(module, ChannelMasked)}
    for name in sorted(names, key=lambda name: name not in masked):  # stable: tree order
        module = model.get_submodule(name)
        if isinstance(module, ChannelMasked):
            out_removed, in_removed = _removed(module.out_mask), _removed(module.in_mask)
        else:
            out_removed = _removed(module_mask(module, "out"))
            in_removed = _removed(module_mask(module, "in"))
            for name, mask in parameter_masks(module).items():
                _slice_parameter(module, name, mask)
            remove_module_masks(module)
        if out_removed or in_removed:
            before = kept_positions.shapes(module)
            remove_channels(module, out_removed, in_removed)
            if not isinstance(module, ChannelMasked):  # adapter layers keep out/in_indices
                kept_positions.record_removed(module, before, out_removed, in_removed)
    sync_attributes(model)  # head / neuron counts of described transformer families
    sync_head_counts(heads)
    _retie(tied)
    if example_inputs is not None:
        _check_runs(model, example_inputs)
    return model


def _check_runs(model: nn.Module, example_inputs) -> None:
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            call_model(model, example_inputs)
    except RuntimeError as error:
        raise SpaError(
            f"compact: the compacted model fails on the example inputs ({error}). Some tensor on "
            "a pruned channel axis was not sliced with its group: masks set by hand rather than "
            "by spa.pruning.apply_masks(model, compute_masks(channel_groups(model, ...), ...)), "
            "or a tensor spa does not see (a buffer, or a parameter used through an op the "
            "dependency graph cannot trace); exclude the layers around it via "
            "`exclude_modules=`. With the hidden size pruned: a module reading it that the "
            "family does not describe, such as a second task head (name every head in the "
            "adapter config's head_modules)"
        ) from error
    finally:
        model.train(training)
