"""Shared fixtures: seeded randomness and tiny models used across the test suite."""

from __future__ import annotations

import pytest
import torch
from torch import nn

CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
BATCHNORMS = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def mlp(in_features: int = 12, hidden: int = 16, num_classes: int = 3) -> nn.Module:
    """Two hidden Linear layers and a head named `fc`."""
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


class ConvNet(nn.Module):
    """conv-BN-ReLU, a grouped conv, a depth-wise conv, global pool and a Linear head `fc`."""

    def __init__(self, spatial_dims: int = 2, in_channels: int = 4, num_classes: int = 3) -> None:
        super().__init__()
        conv, norm = CONVS[spatial_dims], BATCHNORMS[spatial_dims]
        self.conv1 = conv(in_channels, 8, 3, padding=1)
        self.bn1 = norm(8)
        self.conv2 = conv(8, 8, 3, padding=1, groups=2)
        self.bn2 = norm(8)
        self.conv3 = conv(8, 8, 3, padding=1, groups=8)
        self.bn3 = norm(8)
        self.pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[
            spatial_dims
        ](1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class ResidualNet(nn.Module):
    """A 2-D stem and one residual block with a projection shortcut, head `fc`."""

    def __init__(self, in_channels: int = 3, width: int = 8, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.conv_a = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(2 * width)
        self.conv_b = nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(2 * width)
        self.shortcut = nn.Conv2d(width, 2 * width, 1, stride=2, bias=False)
        self.bn_s = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        y = torch.relu(self.bn_a(self.conv_a(x)))
        y = self.bn_b(self.conv_b(y)) + self.bn_s(self.shortcut(x))
        y = torch.relu(y)
        return self.fc(y.mean(dim=(2, 3)))


@pytest.fixture
def tiny_mlp() -> nn.Module:
    return mlp()


@pytest.fixture
def residual_net() -> nn.Module:
    return ResidualNet()


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory: pytest.TempPathFactory):
    """`spa demo --quick` run once per session (slow tests share it; none may modify it)."""
    from spa.experiments.demo import run_demo

    output = tmp_path_factory.mktemp("quick-demo")
    return run_demo(output, quick=True)
