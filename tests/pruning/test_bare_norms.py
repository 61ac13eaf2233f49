"""Norms Torch-Pruning does not know, seen only as their bare weight (issue 21, item 7):
masked == compacted over the last axis, or the group is left out with a warning."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import spa
from spa.errors import SpaWarning
from spa.pruning import apply_masks, channel_groups, compact, compute_masks, score


class TinyRMSNorm(nn.Module):
    """An RMSNorm class of a model's own (as T5LayerNorm): a 1-D weight over the last axis."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(size) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class ChannelsNorm(nn.Module):
    """A norm over [C, H, W] of a conv feature map: its statistics mix every channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(channels) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        return self.weight.view(1, -1, 1, 1) * (x - mean) / (std + 1e-5)


def _prune(model, x, density=0.5):
    groups = channel_groups(model, x)
    apply_masks(model, compute_masks(groups, score(model, "weight", groups), density))
    return groups


def test_own_rms_norm_is_masked_over_kept_channels_so_masked_equals_compacted():
    model = nn.Sequential(nn.Linear(6, 16), TinyRMSNorm(16), nn.Linear(16, 3)).eval()
    x = torch.randn(4, 6)
    spa.adapt(model, spa.SPLoRAConfig(rank=2, head_modules=["2"]))
    groups = _prune(model, x)
    assert any(m.name == "1" and m.role == "norm" for g in groups for m in g.members)
    with torch.no_grad():
        masked = model(x)
        compacted = compact(copy.deepcopy(model), x)
        torch.testing.assert_close(compacted(x), masked, rtol=1e-4, atol=1e-5)
    assert compacted[1].weight.numel() < 16


def test_norm_mixing_channels_leaves_its_group_out_with_a_warning():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        ChannelsNorm(8),
        nn.Conv2d(8, 4, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()
    x = torch.randn(2, 3, 6, 6)
    spa.adapt(model, spa.SPLoRAConfig(rank=2))
    with pytest.warns(SpaWarning, match=r"1\.weight \(the weight of ChannelsNorm, a norm whose"):
        groups = channel_groups(model, x)
    assert not any(m.name == "0" for g in groups for m in g.members)
