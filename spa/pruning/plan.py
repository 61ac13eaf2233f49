"""`plan`: what a prune keeps and costs, computed on a model that holds no weights (issue 22).

A model built on the meta device (`with torch.device("meta"): model = ...`) has every shape and
no values, so its channel groups, the masks a density asks for and the compacted model's
parameters and FLOPs can all be worked out before a single weight is loaded: an 8B model is
planned in seconds. Scores need weights, so the plan keeps the same fraction of every group
(`ranking="local"` with equal scores); the kept counts are those any local ranking reaches, and
a global ranking moves channels between groups but keeps the same totals within one unit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from spa.adapters import FinePruningConfig, adapt, adapter_layers, channel_layers, replace_module
from spa.adapters.sharing import shared_copy
from spa.flops import count_flops
from spa.pruning.channel_group import ChannelGroup
from spa.pruning.compaction import compact
from spa.pruning.groups import channel_groups
from spa.pruning.masking import RoundTo, apply_masks, compute_masks


@dataclass(frozen=True)
class UnitPlan:
    """One kind of pruning unit in a plan ("heads", "ffn", "hidden", or "channels").

    Args:
        groups: channel groups of this unit.
        channels: their channels before pruning (heads or key/value heads, neurons, ...).
        kept: channels the plan keeps.
    """

    groups: int
    channels: int
    kept: int


@dataclass(frozen=True)
class Plan:
    """What pruning a model to a density keeps and costs, before any weight is loaded.

    Args:
        density: the target parameter density of the pruned layers.
        parameters: parameters of the model before pruning.
        kept_parameters: parameters of the compacted model.
        flops: FLOPs of one forward pass on the example inputs before pruning.
        kept_flops: the same for the compacted model.
        units: per unit kind, its groups and kept channels.
        groups: the channel groups (as `spa.pruning.channel_groups` returns them).
    """

    density: float
    parameters: int
    kept_parameters: int
    flops: int
    kept_flops: int
    units: dict[str, UnitPlan] = field(default_factory=dict)
    groups: list[ChannelGroup] = field(default_factory=list, repr=False)

    def summary(self) -> str:
        """A few lines: parameters and FLOPs before and after, kept channels per unit."""
        lines = [
            f"parameters {self.parameters:,} -> {self.kept_parameters:,} "
            f"({self.kept_parameters / max(self.parameters, 1):.1%})",
            f"FLOPs {self.flops:,} -> {self.kept_flops:,} "
            f"({self.kept_flops / max(self.flops, 1):.1%})",
        ]
        lines += [
            f"  {unit}: {u.kept:,} of {u.channels:,} channels in {u.groups} group(s)"
            for unit, u in self.units.items()
        ]
        return "\n".join(lines)


def plan(
    model: nn.Module,
    *,
    units: Sequence[str] | None = None,
    density: float = 0.5,
    example_inputs=None,
    round_to: RoundTo = None,
) -> Plan:
    """Plan pruning `model` to `density`: kept channels per unit, parameters and FLOPs.

    `model` may live on the meta device (no weights at all) or hold real weights; it is not
    modified (the plan works on a structural copy that shares its tensors). Both give the same
    plan.

    Args:
        model: the plain model (not adapted), e.g. built under `torch.device("meta")`.
        units: for described transformer families, the units to prune ("heads", "ffn",
            "hidden"); None = heads and FFN neurons.
        density: target parameter density of the prunable layers, as in `compute_masks`.
        example_inputs: the batch FLOPs are counted on (and Torch-Pruning traces, for models of
            no described family); None = one sequence of 128 token ids for a `transformers`
            model with a `vocab_size`.
        round_to: as in `compute_masks` (e.g. `{"hidden": heads}` to keep the hidden size a
            multiple of the heads).

    Returns:
        The `Plan`.

    Raises:
        ConfigError: as `channel_groups` and `compute_masks`, or without example inputs for a
            model spa cannot make them for.
    """
    inputs = _example_inputs(model) if example_inputs is None else example_inputs
    flops = count_flops(model, inputs)
    parameters = _parameter_count(model)
    planning = adapt(shared_copy(model), FinePruningConfig())
    _masks_beside(planning)
    groups = channel_groups(planning, inputs, units=units)
    scores = {index: torch.ones(group.size) for index, group in enumerate(groups)}
    masks = compute_masks(groups, scores, density=density, ranking="local", round_to=round_to)
    apply_masks(planning, masks)
    kept_groups = channel_groups(planning, inputs, units=units)
    compact(planning)
    for name, layer in list(adapter_layers(planning)):
        replace_module(planning, name, layer.base)  # rank 0, nothing masked: the plain layer
    return Plan(
        density=density,
        parameters=parameters,
        kept_parameters=_parameter_count(planning),
        flops=flops,
        kept_flops=count_flops(planning, inputs),
        units=_units(kept_groups),
        groups=groups,
    )


def _masks_beside(model: nn.Module) -> None:
    """Give the channel masks of a meta-device model values (all kept) on the CPU."""
    for _, layer in channel_layers(model):
        for name, mask in layer.masks().items():
            if mask.is_meta:
                setattr(layer, name, torch.ones(mask.shape, dtype=torch.bool))


def _units(groups: Sequence[ChannelGroup]) -> dict[str, UnitPlan]:
    units: dict[str, UnitPlan] = {}
    for group in groups:
        unit = group.unit or "channels"
        found = units.get(unit, UnitPlan(0, 0, 0))
        kept = sum(bool(k) for k in group.kept)
        units[unit] = UnitPlan(found.groups + 1, found.channels + group.size, found.kept + kept)
    return units


def _parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())  # tied ones once


def _example_inputs(model: nn.Module) -> dict[str, torch.Tensor]:
    from spa.errors import ConfigError

    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if not isinstance(vocab, int):
        raise ConfigError(
            f"plan: cannot make example inputs for {type(model).__name__}; pass example_inputs="
        )
    device = next(model.parameters()).device
    return {"input_ids": torch.zeros(1, 128, dtype=torch.long, device=device)}
