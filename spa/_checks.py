"""Argument checks shared by the public API: a wrong type is a spa error naming the argument."""

from __future__ import annotations

from typing import Any

from torch import nn

from spa.errors import ConfigError


def require_module(value: Any, where: str) -> None:
    """Refuse anything but an `nn.Module` where a model is expected.

    Args:
        value: what the caller passed.
        where: the function and argument, e.g. "adapt: model".

    Raises:
        ConfigError: naming `where` and the type passed (None, a path string, ...).
    """
    if not isinstance(value, nn.Module):
        shown = repr(value) if len(repr(value)) <= 40 else type(value).__name__
        raise ConfigError(f"{where} must be a torch.nn.Module, got {shown}")
