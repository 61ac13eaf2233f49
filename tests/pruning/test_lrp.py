"""LRP: hand-checked examples, conservation, and gradient x input for bias-free ReLU nets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import spa
from spa.errors import ConfigError
from spa.pruning import lrp


def _hand_net(first_rows):
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(first_rows))
        model[2].weight.copy_(torch.tensor([[1.0, 1.0]]))
    return model


def test_lrp_epsilon_two_layer_hand_example():
    # z1 = W1 x = (-1, 4), a1 = (0, 4), f = 4. With eps = 1:
    # R(a1) = a1 * 1 * 4 / (4 + 1) = (0, 3.2); R(x) = x * W1[1] * 3.2 / (4 + 1) = (1.28, 1.28).
    model = _hand_net([[1.0, -1.0], [2.0, 1.0]])
    result = lrp(model, torch.tensor([[1.0, 2.0]]), torch.tensor([0]), epsilon=1.0)
    torch.testing.assert_close(result.input, torch.tensor([[1.28, 1.28]]))
    torch.testing.assert_close(result.layers["0"], torch.tensor([[0.0, 3.2]]))
    torch.testing.assert_close(result.output, torch.tensor([4.0]))


def test_lrp_zplus_two_layer_hand_example():
    # z1 = (-1, 1), a1 = (0, 1), f = 1. z+ rule at layer 0 for unit 1: w+ = (2, 0),
    # z+ = 1 * 2 = 2, so R(x) = (1 * 2 * 1 / 2, 0) = (1, 0); the epsilon rule gives (2, -1).
    model = _hand_net([[1.0, -1.0], [2.0, -0.5]])
    x = torch.tensor([[1.0, 2.0]])
    zplus = lrp(model, x, torch.tensor([0]), rule="zplus", epsilon=0.0)
    torch.testing.assert_close(zplus.input, torch.tensor([[1.0, 0.0]]))
    epsilon = lrp(model, x, torch.tensor([0]), rule="epsilon", epsilon=0.0)
    torch.testing.assert_close(epsilon.input, torch.tensor([[2.0, -1.0]]))


class _BiasFreeResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6, affine=True)
        self.pool = nn.MaxPool2d(2)
        self.conv = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4, bias=False)
        with torch.no_grad():  # BatchNorm without shift: an affine map without bias
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.running_var.uniform_(0.5, 2.0)
        self.eval()

    def forward(self, x):
        x = self.pool(torch.relu(self.bn(self.stem(x))))
        x = torch.relu(self.conv(x) + x)  # residual addition
        return self.fc(torch.flatten(self.avg(x), 1))


def test_lrp_conserves_relevance_through_residual_pool_and_norm():
    model = _BiasFreeResidual()
    result = lrp(model, torch.randn(3, 3, 8, 8), epsilon=0.0)
    per_sample = result.output
    torch.testing.assert_close(result.input.sum(dim=(1, 2, 3)), per_sample, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        result.layers["stem"].sum(dim=(1, 2, 3)), per_sample, rtol=1e-4, atol=1e-5
    )


def test_lrp_epsilon_absorbs_at_most_a_little_relevance():
    model = _BiasFreeResidual()
    result = lrp(model, torch.randn(3, 3, 8, 8), epsilon=1e-6)
    torch.testing.assert_close(result.input.sum(dim=(1, 2, 3)), result.output, rtol=1e-3, atol=1e-4)


def test_lrp_z_rule_equals_gradient_times_input_for_bias_free_relu_net():
    model = _BiasFreeResidual()
    x = torch.randn(2, 3, 8, 8)
    targets = torch.tensor([1, 3])
    result = lrp(model, x, targets, epsilon=0.0)
    x_leaf = x.clone().requires_grad_(True)
    picked = model(x_leaf).gather(1, targets[:, None]).sum()
    (gradient,) = torch.autograd.grad(picked, x_leaf)
    torch.testing.assert_close(result.input, x * gradient, rtol=1e-4, atol=1e-6)


def test_lrp_on_splora_uses_adapted_weights():
    model = _BiasFreeResidual()
    spa.adapt(model, spa.SPLoRAConfig(rank=2))
    with torch.no_grad():
        model.stem.up.normal_()
    fused = spa.fuse(model)
    x = torch.randn(2, 3, 8, 8)
    adapted, plain = lrp(model, x, epsilon=1e-6), lrp(fused, x, epsilon=1e-6)
    torch.testing.assert_close(adapted.layers["stem"], plain.layers["stem"])
    torch.testing.assert_close(adapted.input, plain.input)


def test_lrp_rejects_unknown_rule():
    with pytest.raises(ConfigError, match="rule must be 'epsilon' or 'zplus', got 'alpha'"):
        lrp(_hand_net([[1.0, 0.0], [0.0, 1.0]]), torch.ones(1, 2), rule="alpha")
