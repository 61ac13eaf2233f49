"""Tiny networks for the pruning tests, beside the shared ones in tests/conftest.py."""

from __future__ import annotations

import torch
from torch import nn

from tests.conftest import ConvNet, ResidualNet  # noqa: F401 - the shared tiny models


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
