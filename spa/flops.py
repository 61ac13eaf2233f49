"""FLOPs (via `torch.utils.flop_counter`); `density` is re-exported from `spa.adapters.density`."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from spa._batch import call_model
from spa.adapters.density import density

__all__ = ["count_flops", "count_macs", "density"]


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
