"""ResNet-18/34/50 written from scratch with torchvision-identical state-dict keys.

The module tree mirrors torchvision's `resnet18/34/50` (v1.5: a Bottleneck strides in `conv2`),
so `model.load_state_dict(torch.load("resnet50-....pth"))` works on a torchvision checkpoint
file without torchvision being installed. See `load_torchvision_weights` for a checked load.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from spa.errors import ConfigError
from spa.models.loading import WeightLoadReport, load_torchvision_weights

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "WeightLoadReport",
    "load_torchvision_weights",
    "resnet18",
    "resnet34",
    "resnet50",
]


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def _downsample(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """Projection shortcut (`downsample.0` conv, `downsample.1` BN) when the shape changes."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(_conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity or projection shortcut (ResNet-18/34).

    Args:
        in_channels: channels entering the block.
        channels: channels of both convolutions; the block outputs `channels * expansion`.
        stride: stride of `conv1` (and of the projection shortcut).
    """

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = _downsample(in_channels, channels * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        """Return `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, as torchvision v1.5), 1x1 expand, plus shortcut (ResNet-50).

    Args:
        in_channels: channels entering the block.
        channels: bottleneck width; the block outputs `channels * expansion`.
        stride: stride of `conv2` (and of the projection shortcut).
    """

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv1x1(in_channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = _conv3x3(channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = _conv1x1(channels, channels * self.expansion)
        self.bn3 = nn.BatchNorm2d(channels * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, channels * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        """Return the bottleneck residual `relu(bn3(conv3(...)) + shortcut(x))`."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A ResNet with torchvision's module names (`conv1`, `bn1`, `layer1..4`, `fc`).

    Args:
        block: `BasicBlock` or `Bottleneck`.
        blocks_per_stage: number of blocks in each of the four stages.
        num_classes: output features of the `fc` head.
        small_input: if true, use a CIFAR-style stem (3x3 stride-1 `conv1`, no max-pool); the
            keys stay `conv1` and `bn1`, only `conv1.weight`'s kernel size differs.
        width: channels of the stem and of stage 1; stages 2-4 double it each time.
        in_channels: channels of the input images.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        blocks_per_stage: tuple[int, int, int, int],
        *,
        num_classes: int = 1000,
        small_input: bool = False,
        width: int = 64,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        for field, value in (
            ("num_classes", num_classes),
            ("width", width),
            ("in_channels", in_channels),
        ):
            if value < 1:
                raise ConfigError(f"ResNet: {field} must be a positive integer, got {value}")
        if small_input:
            self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        stage_channels = width
        current = width
        for index, block_count in enumerate(blocks_per_stage):
            stride = 1 if index == 0 else 2
            blocks = []
            for block_index in range(block_count):
                blocks.append(block(current, stage_channels, stride if block_index == 0 else 1))
                current = stage_channels * block.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
            stage_channels *= 2
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(current, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # Same scheme as torchvision so training recipes carry over.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Map images `(N, in_channels, H, W)` to logits `(N, num_classes)`."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)  # (N, channels)
        return self.fc(x)


def resnet18(
    num_classes: int = 1000, small_input: bool = False, width: int = 64, in_channels: int = 3
) -> ResNet:
    """Build ResNet-18 (11,689,512 parameters at the defaults).

    Args:
        num_classes: output features of the `fc` head.
        small_input: use the CIFAR-style 3x3 stride-1 stem without max-pool.
        width: channels of the stem and of stage 1.
        in_channels: channels of the input images.

    Returns:
        The randomly initialised model.
    """
    return ResNet(
        BasicBlock,
        (2, 2, 2, 2),
        num_classes=num_classes,
        small_input=small_input,
        width=width,
        in_channels=in_channels,
    )


def resnet34(
    num_classes: int = 1000, small_input: bool = False, width: int = 64, in_channels: int = 3
) -> ResNet:
    """Build ResNet-34 (21,797,672 parameters at the defaults).

    Args:
        num_classes: output features of the `fc` head.
        small_input: use the CIFAR-style 3x3 stride-1 stem without max-pool.
        width: channels of the stem and of stage 1.
        in_channels: channels of the input images.

    Returns:
        The randomly initialised model.
    """
    return ResNet(
        BasicBlock,
        (3, 4, 6, 3),
        num_classes=num_classes,
        small_input=small_input,
        width=width,
        in_channels=in_channels,
    )


def resnet50(
    num_classes: int = 1000, small_input: bool = False, width: int = 64, in_channels: int = 3
) -> ResNet:
    """Build ResNet-50 v1.5 (25,557,032 parameters at the defaults).

    Args:
        num_classes: output features of the `fc` head.
        small_input: use the CIFAR-style 3x3 stride-1 stem without max-pool.
        width: channels of the stem and of stage 1 (bottleneck width).
        in_channels: channels of the input images.

    Returns:
        The randomly initialised model.
    """
    return ResNet(
        Bottleneck,
        (3, 4, 6, 3),
        num_classes=num_classes,
        small_input=small_input,
        width=width,
        in_channels=in_channels,
    )
