"""Model registry and the networks spa ships: torchvision-compatible ResNets, tiny test nets and
a tiny Llama-style language model.

Example:
    >>> from spa.models import create_model
    >>> model = create_model("resnet18", num_classes=10, small_input=True)
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from spa._registry import Registry
from spa.errors import ConfigError
from spa.models.loading import (
    LoadedModel,
    WeightLoadReport,
    load_model,
    load_torchvision_weights,
    read_state_dict,
)
from spa.models.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    resnet18,
    resnet34,
    resnet50,
)
from spa.models.tiny import MLP, TinyConvNet, mlp, tiny_convnet
from spa.models.tiny_lm import tiny_llama

__all__ = [
    "MODELS",
    "MLP",
    "BasicBlock",
    "LoadedModel",
    "Bottleneck",
    "ResNet",
    "TinyConvNet",
    "WeightLoadReport",
    "create_model",
    "load_model",
    "load_torchvision_weights",
    "mlp",
    "read_state_dict",
    "resnet18",
    "resnet34",
    "resnet50",
    "tiny_convnet",
    "tiny_llama",
]

MODELS: Registry = Registry("model")
MODELS.register("resnet18")(resnet18)
MODELS.register("resnet34")(resnet34)
MODELS.register("resnet50")(resnet50)
MODELS.register("tiny_convnet")(tiny_convnet)
MODELS.register("mlp")(mlp)
MODELS.register("tiny_llama")(tiny_llama)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered under `name`.

    Args:
        name: a registered model name (see `MODELS.names()`).
        **kwargs: keyword arguments of the model's builder, e.g. `num_classes`.

    Returns:
        The randomly initialised model.

    Raises:
        ConfigError: if `name` is unknown (the message lists the known names) or the keyword
            arguments do not fit the builder.
    """
    builder = MODELS.get(name)
    try:
        inspect.signature(builder).bind(**kwargs)
    except TypeError as error:
        raise ConfigError(
            f"model {name!r}: invalid keyword arguments {sorted(kwargs)} ({error})"
        ) from None
    return builder(**kwargs)
