"""Pruning to a compute budget: where a model's multiply-accumulates go, per prunable layer.

A prunable layer's MACs are its retained weight entries times the output positions each entry
is applied at (batch x spatial positions for a conv, tokens for a Linear), so the FLOPs target
reuses the same exact per-removal bookkeeping as the parameter density, with each layer weighted
by its positions. Plain (not adapted) Linear layers that a channel group also narrows, such as
an LM head reading the pruned hidden size, are counted the same way. Everything else the model
computes (norms, attention matmuls, pooling, layers no group touches) is counted as fixed,
measured once with `torch.utils.flop_counter`: the fraction is of the whole model's MACs, and
since those other operations can only shrink when channels go, the compacted model's measured
MACs are at or below the target.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from torch import nn

from spa._batch import call_model
from spa.flops import count_macs
from spa.pruning.channel_group import ChannelGroup


@dataclass(frozen=True)
class MacsProfile:
    """Where one forward pass of a model spends its MACs, measured on example inputs.

    Args:
        positions: per prunable layer path, the output positions each weight entry is applied
            at for the example batch.
        total: MACs of the whole model for the example batch, as measured.
        fixed: MACs outside the counted layers' weight products (attention, norms, ...).
        plain: per plain Linear layer a channel group narrows (an LM head reading the hidden
            size), its full `(rows, columns, positions)`; its MACs are counted, not fixed.
    """

    positions: Mapping[str, int]
    total: int
    fixed: int
    plain: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)


def macs_profile(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    example_inputs,
    plain: Mapping[str, nn.Linear] | None = None,
) -> MacsProfile:
    """Measure the output positions of every layer in `layers` and the model's total MACs.

    Args:
        model: the adapted (masked, not compacted) model.
        layers: prunable layers by dotted path (e.g. the adapter layers of the channel groups).
        example_inputs: a batch (tensor, tuple or dict of keyword arguments).
        plain: plain Linear layers that channel groups narrow, counted like `layers`.

    Returns:
        The profile; pass it to `spa.pruning.compute_masks(..., macs=profile)`.
    """
    plain = plain or {}
    layers = {**layers, **plain}
    positions: dict[str, int] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            channels = _base(module).weight.shape[0]
            # Linear: channels last; conv: channels at dim 1. Either way numel / channels.
            positions[name] = output.numel() // channels

        return record

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    training = model.training
    flags = {parameter: parameter.requires_grad for parameter in model.parameters()}
    model.eval()
    try:
        # Frozen, the adapters cache their fused weights in this first pass (which records the
        # positions), so the counted pass holds inference MACs only (no `down @ up` products).
        for parameter in flags:
            parameter.requires_grad_(False)
        with torch.no_grad():
            call_model(model, example_inputs)
        for handle in handles:
            handle.remove()
        total = count_macs(model, example_inputs)
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
        for parameter, flag in flags.items():
            parameter.requires_grad_(flag)
    layer_macs = sum(_weight_entries(layers[name]) * count for name, count in positions.items())
    shapes = {
        name: (*layer.weight.shape, positions[name])
        for name, layer in plain.items()
        if name in positions
    }
    return MacsProfile(
        positions=MappingProxyType({k: v for k, v in positions.items() if k not in plain}),
        total=total,
        fixed=max(0, total - layer_macs),
        plain=MappingProxyType(shapes),
    )


def _base(layer: nn.Module) -> nn.Module:
    return getattr(layer, "base", layer)  # an adapter layer holds its base layer


def _weight_entries(layer: nn.Module) -> int:
    return math.prod(_base(layer).weight.shape)


def flops_profile(model: nn.Module, groups: Sequence[ChannelGroup], example_inputs) -> MacsProfile:
    """`macs_profile` over the adapter layers that the channel groups count.

    Args:
        model: the adapted model the groups were built for.
        groups: from `spa.pruning.channel_groups`.
        example_inputs: a batch.

    Returns:
        The profile for `compute_masks(..., macs=...)`.
    """
    names = groups[0].layers if groups else {}
    plain = {
        member.name: model.get_submodule(member.name)
        for group in groups
        for member in group.members
        if not member.is_adapter and member.role in ("in", "out")
    }
    plain = {name: layer for name, layer in plain.items() if type(layer) is nn.Linear}
    layers = {name: model.get_submodule(name) for name in names}
    return macs_profile(model, layers, example_inputs, plain)
