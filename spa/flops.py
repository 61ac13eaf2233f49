"""FLOPs (via `torch.utils.flop_counter`); `density` is re-exported from `spa.adapters.density`."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from spa._batch import call_model
from spa.adapters.density import density

__all__ = ["count_flops", "count_macs", "density"]


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
