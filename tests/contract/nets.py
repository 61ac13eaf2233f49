"""Tiny nets, one per base layer type of the contract table: two adaptable layers and a head."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
POOLS = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
SIZES = {1: (5,), 2: (5, 5), 3: (3, 3, 3)}


def _linear() -> tuple[nn.Module, torch.Tensor]:
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    return net, torch.randn(4, 6)


def _conv(dims: int, groups: int) -> Callable[[], tuple[nn.Module, torch.Tensor]]:
    def build() -> tuple[nn.Module, torch.Tensor]:
        conv = CONVS[dims]
        net = nn.Sequential(
            conv(2, 4, 3, padding=1),
            nn.ReLU(),
            conv(4, 4, 3, padding=1, groups=groups),
            nn.ReLU(),
            POOLS[dims](1),
            nn.Flatten(),
            nn.Linear(4, 3),
        )
        return net, torch.randn(2, 2, *SIZES[dims])

    return build


NETS: dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]] = {
    "linear": _linear,
    "conv1d": _conv(1, 1),
    "conv2d": _conv(2, 1),
    "conv3d": _conv(3, 1),
    "conv2d-grouped": _conv(2, 2),
    "conv2d-depthwise": _conv(2, 4),
}
