"""The protocol every adapter layer satisfies, and helpers to find adapter layers in a model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from spa.adapters.splopa import SPLoPALinear
from spa.adapters.splora import SPLoRALayer

ADAPTER_TYPES = (SPLoRALayer, SPLoPALinear)


@runtime_checkable
class AdapterLayer(Protocol):
    """What fuse, accounting, pruning and bundles rely on."""

    base: nn.Module

    def delta_weight(self) -> torch.Tensor: ...

    def fused_weight(self) -> torch.Tensor: ...

    def masked_base_weight(self) -> torch.Tensor: ...

    def adapter_parameter_names(self) -> list[str]: ...

    def masks(self) -> dict[str, torch.Tensor]: ...


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Yield `(dotted_name, layer)` for every adapter layer in `model`, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, ADAPTER_TYPES):
            yield name, module


def is_adapted(model: nn.Module) -> bool:
    """True if `model` contains at least one adapter layer."""
    return next(adapter_layers(model), None) is not None
