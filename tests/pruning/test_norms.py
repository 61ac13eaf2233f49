"""Norms over the last axis: masked == the explicit formula on the kept channels == compacted."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.models.convnext.modeling_convnext import ConvNextLayerNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from spa.pruning.groups import remove_channels
from spa.pruning.module_masks import remove_module_masks, set_module_mask
from spa.pruning.norms import is_last_axis_norm

WIDTH, EPS = 12, 1e-5
KEPT = torch.tensor([0, 2, 3, 7, 8, 11])


class ScaledRMSNorm(nn.Module):
    """A norm class spa has never seen: Gemma-style `(1 + weight)` scale and a buffer shift."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(width))
        self.register_buffer("shift", torch.zeros(width))
        self.eps = EPS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return x * (1 + self.weight) + self.shift


def _rms(x, weight):  # the explicit formula on the kept channels
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * weight


def _layer(x, weight, bias):
    mean = x.mean(-1, keepdim=True)
    variance = (x - mean).pow(2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(variance + EPS) * weight + bias


def _norms():
    llama = LlamaRMSNorm(WIDTH, eps=EPS)
    torch_rms = nn.RMSNorm(WIDTH, eps=EPS)
    layer = nn.LayerNorm(WIDTH, eps=EPS)
    scaled = ScaledRMSNorm(WIDTH)
    with torch.no_grad():
        for norm in (llama, torch_rms, layer, scaled):
            norm.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-0.5, 0.5)
        scaled.shift.uniform_(-0.5, 0.5)
    return {
        "llama": (llama, lambda x: _rms(x, llama.weight[KEPT])),
        "torch-rms": (torch_rms, lambda x: _rms(x, torch_rms.weight[KEPT])),
        "layer": (layer, lambda x: _layer(x, layer.weight[KEPT], layer.bias[KEPT])),
        "scaled": (
            scaled,
            lambda x: _rms(x, 1 + scaled.weight[KEPT]) + scaled.shift[KEPT],
        ),
    }


@pytest.mark.parametrize("name", ["llama", "torch-rms", "layer", "scaled"])
def test_masked_norm_is_the_formula_on_kept_channels_and_equals_the_compacted_norm(name):
    norm, formula = _norms()[name]
    assert is_last_axis_norm(norm)
    x = torch.randn(3, 5, WIDTH)
    mask = torch.zeros(WIDTH, dtype=torch.bool)
    mask[KEPT] = True
    set_module_mask(norm, "out", mask)
    with torch.no_grad():
        masked = norm(x)
        expected = formula(x[..., KEPT])
    torch.testing.assert_close(masked[..., KEPT], expected)
    assert bool((masked[..., ~mask] == 0).all())
    removed = (~mask).nonzero().flatten().tolist()
    remove_module_masks(norm)
    remove_channels(norm, out_positions=removed)
    with torch.no_grad():
        torch.testing.assert_close(norm(x[..., KEPT]), expected)
    assert norm.weight.shape == (len(KEPT),)


def test_channel_first_norms_are_not_last_axis_norms():
    for norm in (nn.BatchNorm2d(4), nn.GroupNorm(2, 4), nn.InstanceNorm2d(4, affine=True)):
        assert not is_last_axis_norm(norm)


# Few kept channels spread over a wide norm: Python's set of them does not iterate in order
# (Torch-Pruning 1.6's LayerNorm pruner kept that order, so the compacted weight was permuted).
SPREAD = [10, 11, 13, 15, 26, 27, 29, 31, 42, 43, 45, 47, 58, 59, 61, 63]


def _spread_norms():
    """LayerNorms of 64 channels: plain, without affine parameters, and ConvNeXt's over the
    channel axis of a feature map (`data_format="channels_first"`)."""
    return {
        "last": nn.LayerNorm(64, eps=EPS),
        "no-affine": nn.LayerNorm(64, eps=EPS, elementwise_affine=False),
        "channels-first": ConvNextLayerNorm(64, eps=EPS, data_format="channels_first"),
    }


@pytest.mark.parametrize("name", ["last", "no-affine", "channels-first"])
def test_layer_norm_compacted_keeps_the_spread_channels_in_order(name):
    norm = _spread_norms()[name]
    affine = norm.weight is not None
    if affine:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 64, 2, 2) if name == "channels-first" else torch.randn(3, 64)
    kept = torch.tensor(SPREAD)
    weight, bias = (norm.weight[kept], norm.bias[kept]) if affine else (1.0, 0.0)
    with torch.no_grad():  # the formula over the channel axis, moved last
        expected = _layer(x[:, kept].movedim(1, -1), weight, bias).movedim(-1, 1)
    remove_channels(norm, out_positions=sorted(set(range(64)) - set(SPREAD)))
    assert norm.normalized_shape == (len(SPREAD),)
    with torch.no_grad():
        torch.testing.assert_close(norm(x[:, kept]), expected)
