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
from spa.errors import ConfigError
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


class RetainedWeights:
    """Retained weight counts per adapter layer, updated as group channels are removed.

    An incremental form of `spa.density` (same numerator and denominator, see
    `spa.adapters.density`): it starts from the layers' own `retained_weights()` (recorded in
    `LayerInfo`) and follows each removal exactly, so ranking never re-walks the model.

    With a `MacsProfile`, every layer's weight entries are weighted by the output positions they
    are applied at and the profile's fixed MACs are added to both sides, so `density` is the
    retained fraction of the whole model's MACs instead of the prunable weights.
    """

    def __init__(self, groups: Sequence[ChannelGroup], macs: MacsProfile | None = None) -> None:
        layers = groups[0].layers
        cost = _layer_costs(layers, macs)
        self.kernel = {name: info.kernel * cost[name] for name, info in layers.items()}
        self.out = {name: sum(info.out_mask) for name, info in layers.items()}
        self.cols = {name: sum(info.in_mask) for name, info in layers.items()}
        self.fixed = macs.fixed if macs is not None else 0
        self.base = sum(info.base_weights * cost[name] for name, info in layers.items())
        plain = dict(macs.plain) if macs is not None else {}
        for name, (rows, columns, positions) in plain.items():  # e.g. an LM head
            self.kernel[name] = positions
            self.out[name], self.cols[name] = rows, columns
            self.base += rows * columns * positions
        for group in groups:  # channels already removed from plain layers
            for member in group.members:
                if member.name in plain and member.role in ("in", "out"):
                    side = self.out if member.role == "out" else self.cols
                    side[member.name] -= sum(not group.kept[c] for c in member.channels)
        self.total = sum(self._layer(name) for name in self.out)
        # Per group: [(layer, role, positions per channel)] over adapter (and plain) members, one
        # list of counts per (layer, role) rather than one tuple per (group, channel, layer):
        # a 1.1B decoder's hidden group alone has ~300,000 such pairs (issue 22's 1.3x goal).
        self._members: dict[int, list[tuple[str, str, list[int]]]] = {}
        for index, group in enumerate(groups):
            counts: dict[tuple[str, str], list[int]] = {}
            for member in group.members:
                counted = member.is_adapter or member.name in plain
                if not counted or member.role not in ("in", "out"):
                    continue
                per_channel = counts.setdefault((member.name, member.role), [0] * group.size)
                for channel in member.channels:
                    per_channel[channel] += 1
            self._members[index] = [(name, role, n) for (name, role), n in counts.items()]

    def effects(self, group: int, channel: int) -> list[tuple[str, str, int]]:
        """`(layer, role, positions)` that removing `channel` of `group` takes from each layer."""
        return [
            (name, role, counts[channel])
            for name, role, counts in self._members.get(group, ())
            if counts[channel]
        ]

    def _layer(self, name: str) -> int:
        return self.out[name] * self.cols[name] * self.kernel[name]

    def density_without(self, group: int, channels: Sequence[int]) -> float:
        """The density after removing `channels` of `group`, without removing them."""
        out, cols = {}, {}
        for channel in channels:
            for name, role, count in self.effects(group, channel):
                side, start = (out, self.out) if role == "out" else (cols, self.cols)
                side[name] = side.get(name, start[name]) - count
        total = self.total
        for name in set(out) | set(cols):
            total -= self._layer(name)
            total += (
                out.get(name, self.out[name])
                * cols.get(name, self.cols[name])
                * (self.kernel[name])
            )
        return (self.fixed + total) / (self.fixed + self.base) if self.base else 1.0

    def remove(self, group: int, channel: int) -> None:
        for name, role, count in self.effects(group, channel):
            self.total -= self._layer(name)
            if role == "out":
                self.out[name] -= count
            else:
                self.cols[name] -= count
            self.total += self._layer(name)

    @property
    def density(self) -> float:
        if not self.base:
            return 1.0
        return (self.fixed + self.total) / (self.fixed + self.base)


def _layer_costs(layers: Mapping, macs: MacsProfile | None) -> dict[str, int]:
    """Per adapter layer, the weight of one retained entry: 1, or its output positions."""
    if macs is None:
        return dict.fromkeys(layers, 1)
    missing = sorted(set(layers) - set(macs.positions))
    if missing:
        raise ConfigError(
            f"compute_masks: the MACs profile has no positions for {', '.join(missing[:3])}; "
            "measure it with spa.pruning.macs_profile on the same model and channel groups"
        )
    return {name: macs.positions[name] for name in layers}
