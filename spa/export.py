"""Deployment transforms: `fuse` turns an adapted model into an ordinary PyTorch model."""

from __future__ import annotations

import copy

import torch
from torch import nn

from spa.adapters._conv import rebuild_layer
from spa.adapters.base import adapter_layers
from spa.adapters.block_fine_pruning import BlockMaskedLinear
from spa.adapters.inject import _set_module
from spa.adapters.splora import SPLoRALayer


def fused_layer(layer: nn.Module) -> nn.Module:
    """A plain `nn.Linear` / `nn.ConvNd` holding the adapter layer's fused, masked weight."""
    with torch.no_grad():
        weight = layer.fused_weight().detach().clone()
        bias = layer.masked_bias() if isinstance(layer, SPLoRALayer) else layer.base.bias
        bias = None if bias is None else bias.detach().clone()
    return rebuild_layer(layer.base, weight, bias)


def fuse(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return `model` with every adapter layer replaced by a plain layer with the fused weight.

    The result has only standard `nn.Linear` / `nn.ConvNd` layers and gives the same outputs as
    the adapted model for the current masks (pruned channels and blocks are zero, not removed:
    see `compact` for physically smaller tensors).

    Args:
        model: an adapted model (layers from `spa.adapt`, or block fine-pruning layers from
            `wrap_block_fine_pruning`).
        inplace: modify `model` itself instead of a deep copy.
    """
    target = model if inplace else copy.deepcopy(model)
    block_fine_pruned = [
        (name, m) for name, m in target.named_modules() if isinstance(m, BlockMaskedLinear)
    ]
    for name, layer in list(adapter_layers(target)) + block_fine_pruned:
        _set_module(target, name, fused_layer(layer))
    return target
