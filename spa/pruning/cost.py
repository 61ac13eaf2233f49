"""Cost-aware ranking: channel scores divided by what removing the channel saves.

Plain ranking removes the lowest-scored channels wherever they sit, so at a parameter density it
tends to cut the layers with many weights but few output positions (late, low-resolution convs)
and leaves the expensive early layers intact. Dividing each channel's score by its cost (the
weights, or the multiply-accumulates, that its removal saves at the current masks) ranks by
importance per unit of budget, as Torch-Pruning's FLOPs-regularised importances and the
latency-aware pruners (HALP) do: a density or FLOPs target then removes compute first.

The cost of a group channel is exact at the current masks: for every adapter layer (and every
plain Linear of a MACs profile) the channel touches, the entries of one weight row (or column)
that are still retained, times the positions each entry is applied at ("macs") or 1 ("params").
Costs are divided by their mean, so normalised scores keep the scale of the plain ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch

from spa.errors import ConfigError
from spa.pruning.budget import MacsProfile
from spa.pruning.channel_group import ChannelGroup

Cost = Literal["none", "params", "macs"]
COSTS: tuple[str, ...] = ("none", "params", "macs")


def channel_costs(
    groups: Sequence[ChannelGroup], macs: MacsProfile | None = None
) -> dict[int, torch.Tensor]:
    """What removing each group channel saves now: retained weights, or MACs with a profile.

    Args:
        groups: from `channel_groups` (their current masks are the starting point).
        macs: a `MacsProfile` (`spa.pruning.flops_profile`) to count MACs; None counts weights.

    Returns:
        Per group index, one non-negative cost per group channel (0 for removed channels).
    """
    from spa.pruning.masking import _Retained  # the exact per-removal bookkeeping, shared

    if not groups:
        return {}
    state = _Retained(groups, macs)
    costs = {}
    for index, group in enumerate(groups):
        values = torch.zeros(group.size, dtype=torch.float64)
        for channel in range(group.size):
            if not group.kept[channel]:
                continue
            for name, role, count in state.effects(index, channel):
                other = state.cols[name] if role == "out" else state.out[name]
                values[channel] += count * other * state.kernel[name]
        costs[index] = values
    return costs


def cost_normalised(
    scores: Mapping[int, torch.Tensor], costs: Mapping[int, torch.Tensor]
) -> dict[int, torch.Tensor]:
    """Scores divided by their channel's cost relative to the mean cost of all live channels.

    A channel whose removal saves nothing (cost 0) gets an infinite score: it is never chosen
    ahead of a channel that saves budget.

    Args:
        scores: per group index, one score per channel (higher = more important).
        costs: from `channel_costs`, the same groups.

    Returns:
        The normalised scores (new tensors; the inputs are unchanged).
    """
    live = [cost[cost > 0] for cost in costs.values()]
    live = torch.cat(live) if live else torch.zeros(0, dtype=torch.float64)
    mean = live.mean() if live.numel() else torch.tensor(1.0, dtype=torch.float64)
    normalised = {}
    for index, value in scores.items():
        relative = (costs[index] / mean).to(value.dtype)
        safe = torch.where(relative > 0, relative, torch.ones_like(relative))
        divided = value / safe
        normalised[index] = torch.where(relative > 0, divided, torch.full_like(value, torch.inf))
    return normalised


def rank_scores(
    groups: Sequence[ChannelGroup],
    scores: Mapping[int, torch.Tensor],
    cost: Cost,
    macs: MacsProfile | None = None,
) -> Mapping[int, torch.Tensor]:
    """The scores `compute_masks` ranks: plain ("none"), or per weight / per MAC removed.

    Args:
        groups: from `channel_groups`.
        scores: per group index, one score per channel.
        cost: "none" (plain ranking), "params" (score per retained weight the channel removes)
            or "macs" (score per multiply-accumulate it removes; needs `macs`).
        macs: the model's `MacsProfile`, required for "macs".

    Returns:
        `scores` itself for "none", otherwise normalised copies.

    Raises:
        ConfigError: for an unknown `cost`, or "macs" without a profile.
    """
    if cost not in COSTS:
        raise ConfigError(f"cost must be one of {COSTS}, got {cost!r}")
    if cost == "none":
        return scores
    if cost == "macs" and macs is None:
        raise ConfigError(
            "cost='macs' needs a MACs profile: pass macs=spa.pruning.flops_profile(model, "
            "groups, example_inputs)"
        )
    return cost_normalised(scores, channel_costs(groups, macs if cost == "macs" else None))
