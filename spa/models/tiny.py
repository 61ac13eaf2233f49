"""Small networks for tests, demos and the digits tasks; they train in seconds on a CPU."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from spa.errors import ConfigError
from spa.models.resnet import BasicBlock

__all__ = ["MLP", "TinyConvNet", "mlp", "tiny_convnet"]


class TinyConvNet(nn.Module):
    """Conv-BN-ReLU stem, a strided conv, one residual `BasicBlock`, global pool and `fc` head.

    Args:
        num_classes: output features of the `fc` head.
        in_channels: channels of the input images.
        width: channels of the stem; the strided conv and the residual block use twice as many.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        for field, value in (
            ("num_classes", num_classes),
            ("in_channels", in_channels),
            ("width", width),
        ):
            if value < 1:
                raise ConfigError(f"tiny_convnet: {field} must be a positive integer, got {value}")
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = BasicBlock(2 * width, 2 * width)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Map images `(N, in_channels, H, W)` to logits `(N, num_classes)`."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))  # (N, 2 * width, H / 2, W / 2)
        x = self.layer1(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class MLP(nn.Module):
    """Flatten, then Linear-ReLU hidden layers (`body`) and a Linear head (`fc`).

    Args:
        in_features: features after flattening the input.
        hidden: width of each hidden layer; an int means one hidden layer.
        num_classes: output features of the `fc` head.
    """

    def __init__(self, in_features: int, hidden: int | Sequence[int], num_classes: int) -> None:
        super().__init__()
        widths = [hidden] if isinstance(hidden, int) else list(hidden)
        for field, value in [("in_features", in_features), ("num_classes", num_classes)] + [
            ("hidden", width) for width in widths
        ]:
            if value < 1:
                raise ConfigError(f"mlp: {field} must be a positive integer, got {value}")
        layers: list[nn.Module] = [nn.Flatten()]
        current = in_features
        for width in widths:
            layers += [nn.Linear(current, width), nn.ReLU()]
            current = width
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(current, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Map inputs `(N, ...)` with `in_features` elements per sample to `(N, num_classes)`."""
        return self.fc(self.body(x))


def tiny_convnet(num_classes: int = 10, in_channels: int = 1, width: int = 16) -> TinyConvNet:
    """Build a `TinyConvNet`.

    Args:
        num_classes: output features of the `fc` head.
        in_channels: channels of the input images.
        width: channels of the stem.

    Returns:
        The randomly initialised model.
    """
    return TinyConvNet(num_classes=num_classes, in_channels=in_channels, width=width)


def mlp(in_features: int = 64, hidden: int | Sequence[int] = 32, num_classes: int = 10) -> MLP:
    """Build an `MLP` (the defaults fit flattened 8x8 digits).

    Args:
        in_features: features after flattening the input.
        hidden: width of each hidden layer; an int means one hidden layer.
        num_classes: output features of the `fc` head.

    Returns:
        The randomly initialised model.
    """
    return MLP(in_features, hidden, num_classes)
