"""`spa.fuse`: an ordinary PyTorch model with the adapted model's outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import spa
from spa.adapters import AdapterLayer
from tests.conftest import ConvNet, ResidualNet


def _randomise(model: nn.Module) -> None:
    """Non-trivial adapters and masks so fused == adapted is a real check."""
    for _, layer in spa.adapter_layers(model):
        for name in layer.adapter_parameter_names():
            nn.init.normal_(getattr(layer, name), std=0.3)
        for mask in layer.masks().values():
            mask.copy_(torch.rand(mask.shape) > 0.3)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_fuse_equals_adapted_convnet(dims):
    model = ConvNet(spatial_dims=dims)
    spa.adapt(model, spa.SPLoRAConfig(rank=3))
    _randomise(model)
    model.eval()
    x = torch.randn(2, 4, *([6] * dims))
    with torch.no_grad():
        expected = model(x)
    fused = spa.fuse(model)
    assert not any(isinstance(m, AdapterLayer) for m in fused.modules())
    assert isinstance(fused.conv2, type(model.conv2.base)) and fused.conv2.groups == 2
    with torch.no_grad():
        torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-5)
    assert model.conv1.kind == "splora"  # not in place by default


def test_fuse_equals_adapted_residual_net_in_training_mode_outputs():
    model = ResidualNet()
    spa.adapt(model, spa.SPLoRAConfig(rank=2))
    _randomise(model)
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)  # gradient-enabled split path
    fused = spa.fuse(model, inplace=True)
    assert fused is model
    torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-5)


def test_fuse_equals_adapted_splopa_with_shared_prototypes():
    model = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 8), nn.Linear(8, 3))
    spa.adapt(model, spa.SPLoPAConfig(block_shape=(4, 4), num_prototypes=3, shared_prototypes=True))
    _randomise(model)
    x = torch.randn(5, 8)
    expected = model(x)
    fused = spa.fuse(model)
    assert [type(m) for m in fused] == [nn.Linear, nn.ReLU, nn.Linear, nn.Linear]
    torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-5)


def test_fuse_equals_block_fine_pruned_model():
    model = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 8), nn.Linear(8, 3))
    spa.adapt(model, spa.BlockFinePruningConfig(block_shape=(4, 4)))
    assert model[0].kind == "block_fine_pruning"
    for layer in (model[0], model[2]):
        layer.block_mask.copy_(torch.rand(layer.block_mask.shape) > 0.4)
        layer.block_mask[0, 0], layer.block_mask[-1, -1] = True, False
    x = torch.randn(5, 8)
    expected = model(x)
    fused = spa.fuse(model)
    assert [type(m) for m in fused] == [nn.Linear, nn.ReLU, nn.Linear, nn.Linear]
    torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-6)
    unmasked = model[3](model[2].base(torch.relu(model[0].base(x))))
    assert not torch.allclose(expected, unmasked)
