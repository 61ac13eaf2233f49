"""Tiny networks for the pruning tests (conftest models are not importable)."""

from __future__ import annotations

import torch
from torch import nn

CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
NORMS = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
POOLS = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}


class ConvNet(nn.Module):
    """conv-BN-ReLU, a grouped conv (2 groups), a depth-wise conv, global pool, head `fc`."""

    def __init__(self, spatial_dims: int = 2, in_channels: int = 4, num_classes: int = 3) -> None:
        super().__init__()
        conv, norm = CONVS[spatial_dims], NORMS[spatial_dims]
        self.conv1 = conv(in_channels, 8, 3, padding=1)
        self.bn1 = norm(8)
        self.conv2 = conv(8, 8, 3, padding=1, groups=2)
        self.bn2 = norm(8)
        self.conv3 = conv(8, 8, 3, padding=1, groups=8)
        self.bn3 = norm(8)
        self.pool = POOLS[spatial_dims](1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class ResidualNet(nn.Module):
    """A stem and one residual block with a projection shortcut, head `fc`."""

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
        return self.fc(torch.relu(y).mean(dim=(2, 3)))


class ConcatNet(nn.Module):
    """Two branches concatenated along channels, LayerNorm-free; head `fc`."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Conv2d(3, 4, 3, padding=1)
        self.right = nn.Conv2d(3, 6, 1)
        self.bn = nn.BatchNorm2d(10)
        self.mix = nn.Conv2d(10, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(torch.cat([self.left(x), self.right(x)], dim=1)))
        return self.fc(torch.relu(self.mix(y)).mean(dim=(2, 3)))


def mlp() -> nn.Sequential:
    """12 -> 16 -> 16 -> 3 with ReLUs; the last Linear is the head."""
    return nn.Sequential(
        nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    )


def randomise(model: nn.Module) -> nn.Module:
    """Non-trivial adapter factors, norm affine parameters and running statistics."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("down", "up")):
                parameter.normal_(std=0.3)
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(std=1.0)  # a large shift would revive pruned channels
                module.running_mean.normal_(std=0.2)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()
