"""The requested density is reached within one unit, or a SpaWarning says why (issue 21 item 8)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import spa
from spa.errors import SpaWarning
from spa.flops import density
from spa.pruning import apply_masks, channel_groups, compute_masks, score
from tests._transformers import llama


def _two_groups():
    """A wide layer pair (one channel = 64 weights) next to a narrow one (one channel = 8)."""
    model = nn.Sequential(
        nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4), nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3)
    )
    spa.adapt(model, spa.FinePruningConfig(head_modules=["5"]))
    return model, torch.randn(2, 4)


def _unit_drops(model, groups):
    """Per group, the density one of its channels takes away (measured on masked copies)."""
    drops = []
    for group in groups:
        trial = copy.deepcopy(model)
        masks = {m.name: {} for m in group.members}
        for member in group.members:
            key = "out_mask" if member.role == "out" else "in_mask"
            mask = torch.ones(member.mask_size, dtype=torch.bool)
            mask[[p for p, c in zip(member.positions, member.channels) if c == 0]] = False
            masks[member.name][key] = mask
        apply_masks(trial, masks)
        drops.append(1.0 - density(trial))
    return drops


def test_global_ranking_fills_with_small_units_instead_of_overshooting_with_a_big_one():
    model, x = _two_groups()
    groups = channel_groups(model, x)
    drops = _unit_drops(model, groups)
    big = max(range(len(groups)), key=lambda i: drops[i])
    # The big group's channels score lowest: plain greedy removes one and overshoots.
    scores = {i: torch.full((g.size,), 0.0 if i == big else 1.0) for i, g in enumerate(groups)}
    for i, group in enumerate(groups):
        scores[i] += torch.arange(group.size) * 1e-3
    target = 1.0 - 0.5 * drops[big]  # half a big unit: a big unit overshoots by the other half
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpaWarning)
        apply_masks(model, compute_masks(groups, scores, target))
    reached = density(model)
    assert reached <= target + 1e-9
    assert target - reached <= 2 * min(drops) + 1e-9 < drops[big] / 2


@pytest.mark.parametrize("criterion", ["weight", "gradient", "taylor", "lrp"])
def test_llama_density_lands_within_one_unit_or_warns(criterion):
    torch.manual_seed(0)
    model = llama().eval()
    spa.adapt(model, spa.SPLoRAConfig(rank=2))
    x, y = torch.randn(2, 5, 32), torch.tensor([0, 2])
    groups = channel_groups(model, x)
    scores = score(model, criterion, groups, data=[(x, y)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_masks(model, compute_masks(groups, scores, 0.3))
    reached = density(model)
    smallest = min(_unit_drops_llama())
    warned = [str(w.message) for w in caught if issubclass(w.category, SpaWarning)]
    assert reached <= 0.3 + 1e-9
    if 0.3 - reached > 2 * smallest + 1e-9:
        assert any(
            "overshot" in message and f"(got {reached:.4f})" in message for message in warned
        )
    else:
        assert not warned


def _unit_drops_llama():
    model = llama().eval()
    spa.adapt(model, spa.SPLoRAConfig(rank=2))
    return _unit_drops(model, channel_groups(model, torch.randn(2, 5, 32)))
