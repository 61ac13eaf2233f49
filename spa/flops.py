"""FLOPs (via `torch.utils.flop_counter`) and the retained-weight density of a pruned model."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from spa._batch import call_model
from spa.adapters.base import adapter_layers
from spa.adapters.splora import SPLoRALayer
from spa.errors import ConfigError


def _attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Both attention matmuls (`Q K^T` and `softmax(.) V`) of a fused SDPA kernel."""
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _attention_kernels() -> dict:
    """Fused attention kernels torch's FLOP counter has no formula for (e.g. SDPA on CPU)."""
    names = (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_fused_attention_overrideable",
        "_scaled_dot_product_attention_math_for_mps",
    )
    kernels = {}
    for name in names:
        op = getattr(torch.ops.aten, name, None)
        if op is not None and op not in flop_counter.flop_registry:
            kernels[op] = _attention_flops
    return kernels


def count_flops(model: nn.Module, example_inputs) -> int:
    """Floating-point operations of one forward pass in eval mode (a multiply-add counts as 2).

    Counted by `torch.utils.flop_counter.FlopCounterMode` on the tensors actually used, so a
    masked but not compacted model counts its full (zero-padded) tensors: `spa.compact` first to
    see the saving. MACs are `count_flops(...) // 2` (see `count_macs`). Attention is
    counted whichever kernel runs it: explicit matmuls, and fused scaled-dot-product attention
    (`Q K^T` and the weighted sum of `V`; torch has no formula for its CPU kernel, so spa adds
    one). Masks and causality are not discounted (the kernels compute the full product).

    Args:
        model: any model.
        example_inputs: a batch (tensor, tuple of tensors or dict of keyword arguments).

    Returns:
        FLOPs for the whole batch.
    """
    training = model.training
    model.eval()
    try:
        with (
            torch.no_grad(),
            FlopCounterMode(display=False, custom_mapping=_attention_kernels()) as counter,
        ):
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
