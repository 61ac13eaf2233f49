"""Running a model on a batch given in any of the forms spa accepts."""

from __future__ import annotations

from typing import Any

from torch import nn


def call_model(model: nn.Module, inputs: Any) -> Any:
    """Run `model` on a batch given as a tensor, a tuple/list of tensors (positional) or a dict."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, tuple | list):
        return model(*inputs)
    return model(inputs)
