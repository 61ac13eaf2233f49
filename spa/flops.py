"""FLOPs (via `torch.utils.flop_counter`) and the retained-weight density of a pruned model."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from spa._batch import call_model
from spa.adapters.base import adapter_layers
from spa.adapters.splora import SPLoRALayer
from spa.errors import ConfigError


def count_flops(model: nn.Module, example_inputs) -> int:
    """Floating-point operations of one forward pass in eval mode (a multiply-add counts as 2).

    Counted by `torch.utils.flop_counter.FlopCounterMode` on the tensors actually used, so a
    masked but not compacted model counts its full (zero-padded) tensors: `spa.compact` first to
    see the saving. MACs are `count_flops(...) // 2` (see `count_macs`).

    Args:
        model: any model.
        example_inputs: a batch (tensor, tuple of tensors or dict of keyword arguments).

    Returns:
        FLOPs for the whole batch.
    """
    training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            call_model(model, example_inputs)
    finally:
        model.train(training)
    return int(counter.get_total_flops())


def count_macs(model: nn.Module, example_inputs) -> int:
    """Multiply-accumulate operations of one forward pass: `count_flops(...) // 2`.

    Args:
        model: any model.
        example_inputs: a batch.

    Returns:
        MACs for the whole batch.
    """
    return count_flops(model, example_inputs) // 2


def density(model: nn.Module) -> float:
    """Retained fraction of the prunable layers' base weights (the paper's density).

    Sums `||m_row||_0 * ||m_col||_0 * k` over SPLoRA / fine-pruning layers and divides by the
    weight count of their original base layers, so it is the same before and after `compact`.

    Args:
        model: a model adapted with SPLoRA or fine-pruning layers.

    Returns:
        The density in (0, 1].

    Raises:
        ConfigError: if the model has no SPLoRA / fine-pruning layer.
    """
    retained = base = 0
    for _, layer in adapter_layers(model):
        if not isinstance(layer, SPLoRALayer):
            continue
        kernel = math.prod(layer.base.weight.shape[2:])
        retained += int(layer.out_mask.sum()) * int(layer.in_mask.sum()) * kernel
        base += math.prod(layer.base_shape)
    if base == 0:
        raise ConfigError(
            "density: the model has no SPLoRA or fine-pruning layer; adapt it with "
            "spa.adapt(model, SPLoRAConfig()) or FinePruningConfig()"
        )
    return retained / base
