"""Cost-aware ranking: channel costs equal the MACs torch's FLOP counter sees them save."""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch
from torch import nn

import spa
from spa.errors import ConfigError
from spa.flops import count_macs
from spa.pruning import (
    ChannelPruningConfig,
    apply_masks,
    channel_costs,
    channel_groups,
    compact,
    compute_masks,
    flops_profile,
    prune_step,
    rank_scores,
)
from tests.pruning._nets import randomise


class StridedNet(nn.Module):
    """Three 3x3 convs of equal width; the first runs at 4x the positions of the others."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1, stride=2)
        self.c = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x))))))
        return self.fc(x.mean(dim=(2, 3)))


def _setup():
    model = randomise(spa.adapt(StridedNet(), spa.SPLoRAConfig(rank=2)))
    x = torch.randn(2, 3, 16, 16)
    groups = channel_groups(model, x)
    return model, x, groups


def _macs_without(model, x, groups, index, channel) -> int:
    """MACs of the compacted model after removing one channel of one group."""
    copy = deepcopy(model)
    scores = {i: torch.ones(g.size) for i, g in enumerate(groups)}
    scores[index][channel] = 0.0
    apply_masks(copy, compute_masks(groups, scores, 1.0 - 1e-9))
    compact(copy, x)
    return count_macs(spa.fuse(copy), x)


def test_channel_costs_equal_the_measured_macs_saving():
    model, x, groups = _setup()
    dense = count_macs(spa.fuse(deepcopy(model)), x)
    costs = channel_costs(groups, flops_profile(model, groups, x))
    for index, group in enumerate(groups):
        saved = dense - _macs_without(model, x, groups, index, 0)
        assert costs[index][0].item() == saved, group.root


def test_macs_ranking_removes_the_costlier_of_equal_scored_groups():
    model, x, groups = _setup()
    dense = count_macs(spa.fuse(deepcopy(model)), x)
    saved = [dense - _macs_without(model, x, groups, i, 0) for i in range(len(groups))]
    costliest = max(range(len(groups)), key=saved.__getitem__)
    assert len(set(saved)) == len(saved)  # the case discriminates
    equal = {i: torch.ones(g.size) for i, g in enumerate(groups)}
    # A slightly higher score on the costliest group: plain ranking spares it, MACs-aware not.
    equal[costliest] = torch.full((groups[costliest].size,), 1.01)
    profile = flops_profile(model, groups, x)
    for cost, expect_costliest in (("none", False), ("macs", True)):
        ranked = rank_scores(groups, equal, cost, profile)
        masks = compute_masks(groups, ranked, 1.0 - 1e-9)
        copy = deepcopy(model)
        apply_masks(copy, masks)
        removed = {i for i in range(len(groups)) if not all(channel_groups(copy, x)[i].kept)}
        assert len(removed) == 1
        assert (costliest in removed) is expect_costliest, cost


def test_params_cost_counts_weights_not_positions():
    model, x, groups = _setup()
    costs = channel_costs(groups)
    for index, group in enumerate(groups):
        expected = 0
        for member in group.members:
            if member.is_adapter and member.role in ("out", "in"):
                weight = model.get_submodule(member.name).base.weight  # (out, in, kh, kw)
                other = weight.shape[1] if member.role == "out" else weight.shape[0]
                expected += other * weight[0, 0].numel() * member.channels.count(0)
        assert costs[index][0].item() == expected, group.root


def test_prune_step_macs_cost_needs_a_profile():
    model, x, groups = _setup()
    with pytest.raises(ConfigError, match="MACs profile"):
        prune_step(model, groups, 0.5, ChannelPruningConfig(cost="macs"))
    with pytest.raises(ConfigError, match="cost"):
        ChannelPruningConfig(cost="latency")
