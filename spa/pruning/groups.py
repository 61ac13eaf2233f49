"""Coupled channel groups from Torch-Pruning's dependency graph, and physical channel removal.

This is the only module that imports `torch_pruning`. It is used for two things: tracing the
model into a dependency graph (which channels must go together: residual additions,
concatenations, normalisation layers, grouped and depth-wise convolutions) and slicing modules
(its per-type pruning functions). Every channel-masked adapter layer type found in the model is
registered with it as a customised layer whose pruner calls the layer's `select_channels`, so
base weight slices, adapter tensors, masks and base-channel indices are removed together. No
Torch-Pruning object leaves this module: groups are returned as spa `ChannelGroup` dataclasses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch
import torch_pruning
from torch import nn
from torch_pruning import ops
from torch_pruning.pruner import function as tp_function

from spa.adapters._conv import groups_of
from spa.adapters.inject import task_head
from spa.adapters.modules import NORM_TYPES, is_norm
from spa.adapters.protocols import ChannelMasked, adapter_layers, channel_layers
from spa.errors import ConfigError, UnsupportedLayerError
from spa.families import FAMILIES, config_of, describe
from spa.pruning.channel_group import (
    LAYER_TYPES,
    ChannelGroup,
    Role,
    UnionFind,
    assemble,
    layer_table,
    refresh_groups,
)
from spa.pruning.module_masks import parameter_dim, resume_hooks, suspend_hooks
from spa.pruning.norms import bare_norm_weight, is_last_axis_norm, slice_norm
from spa.pruning.parameter_uses import parameter_problem, reshaped
from spa.pruning.traced_heads import head_links
from spa.pruning.tracing import (
    DEFAULT_TIME_LIMIT,
    cache_off,
    gathered_tables,
    model_label,
    time_bound,
)
from spa.pruning.trial import keep_compactable
from spa.pruning.units import DEFAULT_UNITS, unit_groups

logger = logging.getLogger(__name__)

__all__ = ["ChannelGroup", "channel_groups", "refresh_groups", "remove_channels"]


class _ChannelAdapterPruner(tp_function.BasePruningFunc):
    """Torch-Pruning pruning function for channel-masked adapter layers (base-layer terms)."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        layer.select_channels(out_positions=_kept(layer.base.weight.shape[0], idxs, layer))
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        columns = layer.base.weight.shape[1]
        if columns == 1 and groups_of(layer.base) > 1:
            return layer  # depth-wise: an input goes with its output, removed by the out side
        removed = sorted({int(i) % columns for i in idxs})  # grouped: column within the group
        layer.select_channels(in_positions=_kept(columns, removed, layer))
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.base.weight.shape[0]

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.base.weight.shape[1] * groups_of(layer.base)


def _kept(size: int, removed: Sequence[int], layer: nn.Module) -> torch.Tensor:
    keep = sorted(set(range(size)) - {int(i) for i in removed})
    return torch.tensor(keep, dtype=torch.long, device=layer.out_mask.device)


_CHANNEL_PRUNER = _ChannelAdapterPruner()


def _channel_layer_types(model: nn.Module) -> list[type]:
    """The concrete channel-masked adapter classes in `model` (Torch-Pruning keys by class)."""
    return list(dict.fromkeys(type(layer) for _, layer in channel_layers(model)))


def remove_channels(
    module: nn.Module, out_positions: Sequence[int] = (), in_positions: Sequence[int] = ()
) -> None:
    """Physically remove output and input channels of one module with Torch-Pruning's functions.

    Args:
        module: a channel-masked adapter layer, Linear/ConvNd, BatchNorm/InstanceNorm, LayerNorm
            or another norm over the last axis (RMSNorm, see `spa.pruning.norms`).
        out_positions: output channels to remove (a norm layer's channels); for adapter layers
            positions in `out_mask`.
        in_positions: input channels to remove; for adapter layers positions in `in_mask`.

    Raises:
        ConfigError: if Torch-Pruning has no pruning function for the module type.
    """
    if is_last_axis_norm(module) or isinstance(module, nn.LayerNorm):
        # RMSNorm has no Torch-Pruning pruner; its LayerNorm pruner permutes the kept channels.
        slice_norm(module, [int(i) for i in out_positions])
        return
    if isinstance(module, ChannelMasked):
        pruner = _CHANNEL_PRUNER
    else:
        pruner = tp_function.PrunerBox.get(ops.module2type(module))
    if pruner is None:
        raise ConfigError(f"cannot remove channels of {type(module).__name__}")
    # Torch-Pruning re-creates parameters as trainable; keep the frozen ones frozen.
    flags = {name: p.requires_grad for name, p in module.named_parameters(recurse=False)}
    if len(out_positions):
        pruner.prune_out_channels(module, sorted(int(i) for i in out_positions))
    if len(in_positions) and pruner.prune_in_channels != pruner.prune_out_channels:
        pruner.prune_in_channels(module, sorted(int(i) for i in in_positions))
    for name, parameter in module.named_parameters(recurse=False):
        parameter.requires_grad_(flags.get(name, parameter.requires_grad))


def _entries(module: nn.Module, role: Role, index: int) -> list[tuple[Role, int]]:
    """Mask positions of a Torch-Pruning channel index, in the member's own mask terms."""
    if role != "in" or not isinstance(module, ChannelMasked):
        return [(role, index)]
    columns, groups = module.base.weight.shape[1], groups_of(module.base)
    if columns == 1 and groups > 1:  # depth-wise: input c is output(s) of group c
        per_group = module.base.weight.shape[0] // groups
        return [("out", index * per_group + j) for j in range(per_group)]
    return [("in", index % columns)]


def _group_couplings(module: nn.Module, role: Role, position: int) -> tuple | None:
    """Key shared by the positions a grouped conv must lose together (same place in each group)."""
    adapter = isinstance(module, ChannelMasked)
    base = module.base if adapter else module
    groups = groups_of(base)
    if groups == 1 or base.weight.shape[1] == 1:
        return None
    if role == "out":
        return ("group", id(module), "out", position % (base.weight.shape[0] // groups))
    if role == "in" and not adapter:
        return ("group", id(module), "in", position % base.weight.shape[1])
    return None


def _role(graph, module: nn.Module, handler) -> Role:
    if isinstance(module, nn.Parameter):
        return "param"
    if isinstance(module, LAYER_TYPES) or isinstance(module, ChannelMasked):
        pruner = graph.get_pruner_of_module(module)
        return "out" if handler == pruner.prune_out_channels else "in"
    # Norms, and any other module Torch-Pruning slices on this axis (PReLU, Embedding, ...):
    # `unsupported` turns away the ones spa cannot mask, so nothing is dropped silently.
    return "norm"


def _loose_buffers(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """Floating-point buffers used by module code of their own: `(owner, name, dotted path)`.

    Buffers of layers and norms are read by their module's own op (BatchNorm statistics); the
    others (a per-channel scale or shift kept as a buffer) are traced like bare parameters.
    """
    units = (*LAYER_TYPES, *NORM_TYPES)
    skip = {id(m) for m in model.modules() if isinstance(m, units) or isinstance(m, ChannelMasked)}
    skip |= {id(m) for _, layer in adapter_layers(model) for m in layer.modules()}
    found = []
    for path, module in model.named_modules():
        if id(module) in skip:
            continue
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.is_floating_point() and buffer.numel() > 1:
                found.append((module, name, f"{path}.{name}" if path else name))
    return found


def _trace(model: nn.Module, example_inputs):
    """Build Torch-Pruning's graph with every adapter layer traced as one op.

    Returns:
        The graph, and `{id(stand-in): dotted path}` of the loose buffers traced as parameters.
    """
    modes = {module: module.training for module in model.modules()}
    flags = {parameter: parameter.requires_grad for parameter in model.parameters()}
    inside = {id(p) for _, layer in adapter_layers(model) for p in layer.parameters()}
    suspended = suspend_hooks(model)
    buffers = _loose_buffers(model)
    # A buffer the dependency graph cannot see would be silently left unsliced: trace each one
    # through a parameter stand-in holding the same tensor.
    originals = [owner._buffers[name] for owner, name, _ in buffers]
    stand_ins = [nn.Parameter(buffer.detach()) for buffer in originals]
    try:
        # Frozen adapters run one fused op (no internal graph); other modules need grad_fns.
        for parameter in flags:
            parameter.requires_grad_(id(parameter) not in inside)
        for (owner, name, _), stand_in in zip(buffers, stand_ins):
            owner._buffers[name] = stand_in
        inputs = _with_grad(example_inputs)
        graph = torch_pruning.DependencyGraph().build_dependency(
            model,
            example_inputs=inputs,
            customized_pruners={t: _CHANNEL_PRUNER for t in _channel_layer_types(model)},
            unwrapped_parameters=[(p, parameter_dim(p)) for p in stand_ins],
            verbose=False,
        )
    finally:
        for (owner, name, _), original in zip(buffers, originals):
            owner._buffers[name] = original
        for parameter, flag in flags.items():
            parameter.requires_grad_(flag)
        for module, mode in modes.items():
            module.train(mode)
        resume_hooks(suspended)
    return graph, {id(p): path for p, (_, _, path) in zip(stand_ins, buffers)}


def _with_grad(example_inputs):
    if isinstance(example_inputs, torch.Tensor):
        tensor = example_inputs.detach().clone()
        if tensor.dim() > 1 and tensor.shape[0] == 1:
            # Torch-Pruning 1.6 mis-traces flatten/reshape on a batch of one (its shape
            # matching cannot tell the batch from a channel dimension): trace two samples.
            tensor = torch.cat([tensor, tensor])
        return tensor.requires_grad_(True) if tensor.is_floating_point() else tensor
    if isinstance(example_inputs, dict):
        return {key: _with_grad(value) for key, value in example_inputs.items()}
    if isinstance(example_inputs, list | tuple):
        return type(example_inputs)(_with_grad(value) for value in example_inputs)
    return example_inputs


def channel_groups(
    model: nn.Module,
    example_inputs,
    units: Sequence[str] | None = None,
    time_limit: float | None = DEFAULT_TIME_LIMIT,
) -> list[ChannelGroup]:
    """Channels of the adapted model that must be pruned together, one group per coupling.

    For a model of a described family (`spa.families.describe`: BERT, ViT, GPT-2, Llama, ...)
    the groups are its transformer units, built from the description without tracing (see
    `spa.pruning.units`): attention heads and/or FFN neurons, one group per block and unit.

    Torch-Pruning traces the model with `example_inputs`; every group is rooted at an adapter
    layer's output channels and lists every module slice those channels touch (producers,
    consumers, norms, the head's input). Grouped convs couple the same position in every group
    and a depth-wise conv couples its input and output channel, so channels the dependency graph
    keeps apart are merged where compaction needs it. The task head's output is never pruned.
    Groups that touch a module whose masked form would differ from its compacted form (e.g.
    GroupNorm), or a bare parameter on the channel axis that spa cannot slice (anything but a
    per-channel scale such as ConvNeXt's `layer_scale_parameter`), are left out with a
    `SpaWarning` naming the module or parameter, so masks are never applied to them. Traced
    attention is grouped per head from the model's head counts (`spa.pruning.traced_heads`):
    a group channel is a whole key/value head with its query heads, never a slice of one; a
    projection whose rows are not per head (fused q/k/v) leaves its group out with a warning.
    Tracing runs with the KV cache off and within `time_limit` seconds. Each traced group is
    then tried on a copy of the model (`spa.pruning.trial`): one whose pruning does not compact
    into the masked model (a coupling the graph does not show) is left out with a warning.

    Args:
        model: a model adapted with `spa.adapt` (SPLoRA or fine-pruning).
        example_inputs: a batch the model accepts (tensor, tuple of tensors or dict); not
            used for described families.
        units: for described families, which units to prune ("heads", "ffn", "hidden");
            None = heads and FFN neurons.
        time_limit: seconds Torch-Pruning may trace a model of no described family (main
            thread only); None = unbounded.

    Returns:
        The channel groups, in the order Torch-Pruning finds their roots (for described
        families: block by block, heads before FFN).

    Raises:
        ConfigError: if the model has no SPLoRA / fine-pruning layer, or `units` is given for
            a model of no described family.
        UnsupportedLayerError: if Torch-Pruning cannot trace the model or runs past
            `time_limit`.
    """
    layers = layer_table(model)
    if not layers:
        raise ConfigError(
            "channel pruning needs SPLoRA or fine-pruning layers; adapt the model first with "
            "spa.adapt(model, SPLoRAConfig()) or spa.adapt(model, FinePruningConfig())"
        )
    family = describe(model)
    if family is not None:
        return unit_groups(model, family, DEFAULT_UNITS if units is None else units)
    if units is not None:
        raise ConfigError(
            f"channel_groups: units={tuple(units)!r} needs a model of a described family "
            f"({', '.join(FAMILIES)}); this model's family is not described"
        )
    model_type = getattr(config_of(model), "model_type", None)
    what = model_label(model)
    gathered = gathered_tables(model)
    if gathered:
        raise UnsupportedLayerError(
            f"channel_groups: Torch-Pruning cannot trace {what}: it gathers per-head biases "
            f"through index buffers ({', '.join(gathered[:2])}"
            f"{', ...' if len(gathered) > 2 else ''}), which its graph cannot slice; its family "
            f"is not described (described: {', '.join(FAMILIES)}): add a spa.families.Family for it"
        )
    logger.info("tracing %s with Torch-Pruning (time limit %s s)", what, time_limit)
    started = time.perf_counter()
    with cache_off(model):
        with time_bound(time_limit, what):
            if model_type is None:
                groups = _traced_groups(model, example_inputs, layers)
            else:
                try:
                    groups = _traced_groups(model, example_inputs, layers)
                except UnsupportedLayerError:
                    raise
                except Exception as error:  # Torch-Pruning's failures on untraceable models
                    raise UnsupportedLayerError(
                        f"channel_groups: Torch-Pruning could not trace {what} "
                        f"({type(error).__name__}: {error}); its family is not described "
                        f"(described: {', '.join(FAMILIES)}): add a spa.families.Family for it"
                    ) from error
        groups = keep_compactable(model, groups, example_inputs)
    logger.info("traced %d channel groups in %.1f s", len(groups), time.perf_counter() - started)
    return groups


def _traced_groups(model: nn.Module, example_inputs, layers) -> list[ChannelGroup]:
    """Groups from Torch-Pruning's dependency graph (models of no described family)."""
    head_names = task_head(model)
    head = [model.get_submodule(name) for name in head_names]
    graph, buffer_names = _trace(model, example_inputs)
    names = {id(module): name for name, module in model.named_modules()}
    names.update({id(p): name for name, p in model.named_parameters(remove_duplicate=False)})
    names.update(buffer_names)
    problems = {}  # id -> why spa cannot slice this bare parameter with its group
    norm_owners = {  # a norm class Torch-Pruning does not know shows up as its bare weight
        id(p): m for m in model.modules() if is_norm(m) for p in m.parameters(recurse=False)
    }
    links = UnionFind()
    entries = []  # (tp group index, global channel, module, role, position)
    tp_groups = list(
        graph.get_all_groups(ignored_layers=head, root_module_types=_channel_layer_types(model))
    )
    offset = 0
    for group_index, group in enumerate(tp_groups):
        logger.debug(
            "traced group %d rooted at %s", group_index, names.get(id(group[0].dep.target.module))
        )
        size = max(max(item.root_idxs) for item in group.items if item.root_idxs) + 1
        for item in group.items:
            module = item.dep.target.module
            if id(module) not in names:
                continue  # an op without tensors of its own (addition, reshape, ...)
            role = _role(graph, module, item.dep.handler)
            if role == "param" and id(module) in norm_owners:
                owner = norm_owners[id(module)]
                owner, role, problems[id(module)] = bare_norm_weight(owner, reshaped(graph, module))
                module = owner if role == "norm" else module
            if role == "param" and id(module) not in problems:
                problems[id(module)] = parameter_problem(graph, module)
            for index, root in zip(item.idxs, item.root_idxs):
                for entry_role, position in _entries(module, role, int(index)):
                    channel = offset + int(root)
                    entries.append((group_index, channel, module, entry_role, position))
                    links.union(("slot", id(module), entry_role, position), ("ch", channel))
                    coupling = _group_couplings(module, entry_role, position)
                    if coupling is not None:
                        links.union(coupling, ("ch", channel))
        offset += size
    heads = head_links(model, entries, names, LAYER_TYPES)
    for slot, head in heads.unions:
        links.union(slot, head)
    problems.update(heads.problems)
    entries = [e for e in entries if (id(e[2]), e[3]) not in heads.dropped]
    roots = [names[id(group[0].dep.target.module)] for group in tp_groups]
    return assemble(roots, entries, links, names, layers, problems)
