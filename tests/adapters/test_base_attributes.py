"""Adapter layers show the wrapped layer's attributes; conv/linear subclasses fuse and compact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spa.adapters._conv import rebuild_layer
from spa.adapters.block_fine_pruning import BlockMaskedLinear
from spa.adapters.splopa import SPLoPALinear
from spa.adapters.splora import SPLoRALayer
from spa.deploy.fuse import fused_layer
from spa.errors import UnsupportedLayerError

CONV_ATTRIBUTES = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "padding_mode",
)


class _DepthwiseConv(nn.Conv2d):
    """Like EfficientNet's: a conv subclass whose constructor takes other arguments."""

    def __init__(self, channels: int, stride: int = 2) -> None:
        super().__init__(channels, channels, 3, stride=stride, padding=1, groups=channels)


class _StandardisedConv(nn.Conv2d):
    """A subclass with its own forward: spa cannot reproduce it from the weight alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = (self.weight - self.weight.mean()) / self.weight.std()
        return self._conv_forward(x, weight, self.bias)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_splora_conv_shows_the_base_attributes(dims):
    conv_type = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    base = conv_type(4, 6, 3, stride=2, padding=1, dilation=1, groups=2, padding_mode="reflect")
    layer = SPLoRALayer(base, rank=2)
    for name in CONV_ATTRIBUTES:
        assert getattr(layer, name) == getattr(base, name), name


def test_splora_linear_shows_in_and_out_features():
    layer = SPLoRALayer(nn.Linear(5, 7), rank=2)
    assert (layer.in_features, layer.out_features) == (5, 7)


def test_splora_weight_is_the_fused_weight_and_read_only():
    layer = SPLoRALayer(nn.Conv2d(4, 6, 3, padding=1), rank=2)
    nn.init.normal_(layer.up)
    layer.out_mask[1] = False
    expected = layer.base.weight * layer.out_mask[:, None, None, None]
    expected[:, :, 1, 1] += (layer.down * layer.out_mask[:, None]) @ layer.up
    torch.testing.assert_close(layer.weight, expected)
    with pytest.raises((AttributeError, KeyError), match="weight"):
        layer.weight = nn.Parameter(torch.zeros(6, 4, 3, 3))
    with pytest.raises(AttributeError, match="weight"):
        layer.weight = torch.zeros(6, 4, 3, 3)


def test_attributes_follow_compaction():
    layer = SPLoRALayer(nn.Conv2d(4, 6, 3, padding=1), rank=2)
    layer.select_channels(out_positions=torch.tensor([0, 2, 5]), in_positions=torch.tensor([1]))
    assert (layer.out_channels, layer.in_channels) == (3, 1)


def test_unknown_attributes_still_raise():
    layer = SPLoRALayer(nn.Linear(5, 7), rank=2)
    with pytest.raises(AttributeError, match="no_such_attribute"):
        layer.no_such_attribute  # noqa: B018


def test_block_layers_show_in_and_out_features():
    for layer in (
        SPLoPALinear(nn.Linear(8, 4), block_shape=(2, 2), num_prototypes=2, prototype_rank=1),
        BlockMaskedLinear(nn.Linear(8, 4), block_shape=(2, 2)),
    ):
        assert (layer.in_features, layer.out_features) == (8, 4)


def test_a_conv_subclass_fuses_to_a_plain_conv_with_the_same_output():
    base = _DepthwiseConv(6)
    with torch.no_grad():
        base.bias.uniform_(-1, 1)
    layer = SPLoRALayer(base, rank=2)
    nn.init.normal_(layer.up)
    layer.out_mask[3] = False
    x = torch.randn(2, 6, 9, 9)
    fused = fused_layer(layer)
    assert type(fused) is nn.Conv2d and (fused.groups, fused.stride) == (6, (2, 2))
    torch.testing.assert_close(fused(x), layer(x).detach(), rtol=1e-5, atol=1e-6)


def test_a_conv_subclass_compacts():
    layer = SPLoRALayer(_DepthwiseConv(6), rank=2)
    x = torch.randn(2, 6, 9, 9)
    expected = layer(x).detach()[:, [0, 2, 3]]
    layer.select_channels(out_positions=torch.tensor([0, 2, 3]))
    torch.testing.assert_close(layer(x[:, [0, 2, 3]]).detach(), expected, rtol=1e-5, atol=1e-6)


def test_rebuild_layer_keeps_linear_subclasses_linear():
    class _Head(nn.Linear):
        pass

    base = _Head(5, 3)
    rebuilt = rebuild_layer(base, base.weight.detach(), base.bias.detach())
    assert type(rebuilt) is nn.Linear
    x = torch.randn(4, 5)
    torch.testing.assert_close(rebuilt(x), base(x))


def test_a_subclass_with_its_own_forward_is_refused():
    with pytest.raises(UnsupportedLayerError, match=r"block\.conv.*_StandardisedConv.*forward"):
        SPLoRALayer(_StandardisedConv(4, 4, 3, padding=1), rank=2, name="block.conv")


def test_conv_transpose_is_refused():
    with pytest.raises(UnsupportedLayerError, match="ConvTranspose2d"):
        SPLoRALayer(nn.ConvTranspose2d(4, 4, 3), rank=2)
