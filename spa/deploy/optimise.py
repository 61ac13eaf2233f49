"""Inference-only optimisation of a fused, compacted model: BatchNorm folding, channels-last.

Pruning makes tensors smaller; these transforms make the smaller model run closer to its FLOP
count on CPU and GPU. Outputs stay equal to the input model's (float tolerance).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse as fx_fuse_conv_bn

from spa.adapters.protocols import is_adapted
from spa.deploy.fuse import fuse
from spa.errors import ConfigError


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a Conv/Linear into it (eval-mode statistics).

    Uses `torch.fx` symbolic tracing; the result is a `torch.fx.GraphModule` computing the same
    function in eval mode.

    Args:
        model: a plain (fused) PyTorch model, traceable by `torch.fx`.

    Returns:
        A new model with the BatchNorms folded.

    Raises:
        ConfigError: if the model still holds adapter layers or cannot be traced.
    """
    if is_adapted(model):
        raise ConfigError("fold_batchnorm: fuse the model first with spa.fuse(model)")
    model = copy.deepcopy(model).eval()
    try:
        return fx_fuse_conv_bn(model, inplace=True)
    except Exception as error:  # fx raises many error types for untraceable control flow
        raise ConfigError(
            f"fold_batchnorm: {type(model).__name__} cannot be traced by torch.fx ({error}); "
            "use the model without folding"
        ) from error


def optimize_for_inference(
    model: nn.Module, fold_norms: bool = True, channels_last: bool = True
) -> nn.Module:
    """An eval-mode copy of a fused model, optimised for inference.

    Args:
        model: a plain model (after `spa.fuse`, typically after `spa.compact`); an adapted model
            is fused first.
        fold_norms: fold BatchNorm into the preceding Conv/Linear.
        channels_last: store 4-D conv weights channels-last (feed channels-last inputs, e.g.
            `x.to(memory_format=torch.channels_last)`, for the full benefit).

    Returns:
        The optimised model (the input model is not modified).
    """
    if is_adapted(model):
        model = fuse(model)
    model = fold_batchnorm(model) if fold_norms else copy.deepcopy(model).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval()
