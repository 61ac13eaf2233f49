"""Tests for the tiny demo networks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spa.errors import ConfigError
from spa.models import MLP, BasicBlock, TinyConvNet, create_model, mlp, tiny_convnet


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_tiny_convnet_output_shape() -> None:
    model = tiny_convnet(num_classes=3, in_channels=1)
    assert model(torch.randn(4, 1, 32, 32)).shape == (4, 3)


def test_tiny_convnet_has_residual_block_and_fc_head() -> None:
    model = create_model("tiny_convnet", num_classes=5, in_channels=3, width=8)
    assert isinstance(model, TinyConvNet)
    assert isinstance(model.layer1, BasicBlock)
    assert model.layer1.downsample is None
    assert isinstance(model.fc, nn.Linear)
    assert (model.fc.in_features, model.fc.out_features) == (16, 5)
    assert {"conv1.weight", "bn1.weight", "layer1.conv2.weight", "fc.bias"} <= set(
        model.state_dict()
    )


def test_tiny_convnet_residual_adds_identity() -> None:
    block = tiny_convnet(width=4).eval().layer1
    for parameter in (block.bn2.weight, block.bn2.bias):
        nn.init.zeros_(parameter)
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(x), rtol=0, atol=0)


def test_tiny_convnet_trains_one_step() -> None:
    model = tiny_convnet()
    loss = nn.functional.cross_entropy(model(torch.randn(4, 1, 16, 16)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(parameter.grad is not None for parameter in model.parameters())


def test_tiny_convnet_rejects_non_positive_width() -> None:
    with pytest.raises(ConfigError, match="width must be a positive integer, got 0"):
        tiny_convnet(width=0)


def test_mlp_flattens_images() -> None:
    model = mlp(in_features=64, hidden=16, num_classes=10)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_mlp_hidden_sequence_layers() -> None:
    model = create_model("mlp", in_features=6, hidden=(5, 4), num_classes=2)
    assert isinstance(model, MLP)
    linears = [module for module in model.body if isinstance(module, nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linears] == [(6, 5), (5, 4)]
    assert (model.fc.in_features, model.fc.out_features) == (4, 2)


def test_mlp_matches_dense_computation() -> None:
    model = mlp(in_features=3, hidden=2, num_classes=2)
    x = torch.randn(4, 3)
    first = model.body[1]
    expected = torch.relu(x @ first.weight.T + first.bias) @ model.fc.weight.T + model.fc.bias
    torch.testing.assert_close(model(x), expected, rtol=1e-6, atol=1e-6)


def test_mlp_rejects_non_positive_hidden() -> None:
    with pytest.raises(ConfigError, match="hidden must be a positive integer, got 0"):
        mlp(in_features=4, hidden=(3, 0), num_classes=2)
