"""`fuse`: an adapted model becomes an ordinary PyTorch model (plain Linear / ConvNd layers)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from spa._checks import require_module
from spa.adapters._conv import rebuild_layer
from spa.adapters.modules import replace_module
from spa.adapters.protocols import adapter_layers


def fused_layer(layer: nn.Module) -> nn.Module:
    """A plain `nn.Linear` / `nn.ConvNd` holding an adapter layer's fused weight and bias."""
    with torch.no_grad():
        weight = layer.fused_weight().detach().clone()
        bias = layer.fused_bias()
        bias = None if bias is None else bias.detach().clone()
    return rebuild_layer(layer.base, weight, bias)


def fuse(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return `model` with every adapter layer replaced by a plain layer with the fused weight.

    The result has only standard `nn.Linear` / `nn.ConvNd` layers and gives the same outputs as
    the adapted model for the current masks (pruned channels and blocks are zero, not removed:
    see `compact` for physically smaller tensors).

    Args:
        model: a model adapted with `spa.adapt` (any adapter kind).
        inplace: modify `model` itself instead of a deep copy.
    """
    require_module(model, "fuse: model")
    target = model if inplace else copy.deepcopy(model)
    for name, layer in list(adapter_layers(target)):
        replace_module(target, name, fused_layer(layer))
    return target
