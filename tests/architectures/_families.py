"""Tiny image models of the CNN families issue 11 covers, built from config classes (no download).

`transformers` initialises these models for training from scratch (near-zero classifier, small
weights), which makes their outputs too small to compare; `randomise` gives every tensor a
scale at which a wrong mask or a dropped channel shows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import transformers
from torch import nn

from spa.models import resnet18

IMAGE_SIZE = 32


def _spa_resnet18() -> nn.Module:
    return resnet18(num_classes=5, width=8, small_input=True)


def _hf_resnet() -> nn.Module:
    config = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=5
    )
    return transformers.ResNetForImageClassification(config)


def _mobilenet_v2() -> nn.Module:
    config = transformers.MobileNetV2Config(
        image_size=IMAGE_SIZE,
        depth_multiplier=0.25,
        tf_padding=True,
        finegrained_output=False,
        num_labels=5,
    )
    return transformers.MobileNetV2ForImageClassification(config)


def _efficientnet() -> nn.Module:
    config = transformers.EfficientNetConfig(
        image_size=IMAGE_SIZE,
        width_coefficient=0.1,
        depth_coefficient=0.1,
        hidden_dim=128,  # round_filters(config, 1280) at this width: the top conv's channels
        num_labels=5,
    )
    return transformers.EfficientNetForImageClassification(config)


def _convnext() -> nn.Module:
    config = transformers.ConvNextConfig(
        hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=5, image_size=IMAGE_SIZE
    )
    return transformers.ConvNextForImageClassification(config)


FAMILIES: dict[str, Callable[[], nn.Module]] = {
    "spa-resnet18": _spa_resnet18,
    "hf-resnet": _hf_resnet,
    "mobilenet-v2": _mobilenet_v2,
    "efficientnet": _efficientnet,
    "convnext": _convnext,
}


@torch.no_grad()
def randomise(model: nn.Module) -> nn.Module:
    """Give weights, norm statistics/affines and per-channel scales unit-scale random values."""
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.modules.conv._ConvNd):
            fan_in = module.weight[0].numel()
            module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
            if module.bias is not None:
                module.bias.uniform_(-0.1, 0.1)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.weight.uniform_(0.5, 1.5)
            module.bias.uniform_(-0.2, 0.2)
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
        elif isinstance(module, nn.LayerNorm):
            module.weight.uniform_(0.5, 1.5)
            module.bias.uniform_(-0.2, 0.2)
    for name, parameter in model.named_parameters():
        if name.endswith("layer_scale_parameter"):
            parameter.uniform_(0.5, 1.5)
    return model


def build(family: str) -> nn.Module:
    """A tiny randomised model of `family`, in eval mode."""
    return randomise(FAMILIES[family]()).eval()


def logits(output) -> torch.Tensor:
    """The logits of a model output (a tensor, or a `transformers` output with `.logits`)."""
    return output if isinstance(output, torch.Tensor) else output.logits
