"""Layers that are Linear maps with a transposed weight (`transformers`' `Conv1D`), in one place.

GPT-2 style models compute `x @ W + b` with `W` stored `(in, out)`. spa adapts, prunes, fuses and
bundles such a layer as the equivalent `nn.Linear` (weight `(out, in)` = `W^T`, a transposed view
of the same storage): `adapt` swaps it in before wrapping, and bundles read the original base
layer through `linear_view`, so a task loads onto the untouched original base. This module is
the only place that knows the layout.
"""

from __future__ import annotations

import torch
from torch import nn


def is_transposed_linear(module: nn.Module) -> bool:
    """True for a `transformers` `Conv1D` (weight stored `(in, out)`, `nf` outputs)."""
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(getattr(module, "nf", None), int)
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 2
    )


def out_features(module: nn.Module) -> int:
    """Output features of a Linear-like layer, read from its weight in either layout."""
    return module.weight.shape[1 if is_transposed_linear(module) else 0]


def as_linear(module: nn.Module, share: bool = False) -> nn.Linear:
    """The `nn.Linear` computing what the transposed-weight layer `module` computes.

    Args:
        module: a layer for which `is_transposed_linear` holds.
        share: True shares the weight's storage (a transposed view, for reading a base without
            copying it); False copies it into a contiguous tensor (for a layer that trains).

    Returns:
        An `nn.Linear` with weight `module.weight.T` and `module.bias`, with the same
        `requires_grad` flags, device, dtype and training mode.
    """
    weight = module.weight  # (in, out)
    bias = module.bias
    linear = nn.Linear(weight.shape[0], weight.shape[1], bias=bias is not None, device="meta")
    transposed = weight.detach().t()  # (out, in)
    linear.weight = nn.Parameter(
        transposed if share else transposed.contiguous(), requires_grad=weight.requires_grad
    )
    if bias is not None:
        linear.bias = nn.Parameter(
            bias.detach() if share else bias.detach().clone(), requires_grad=bias.requires_grad
        )
    linear.train(module.training)
    return linear


def linear_view(module: nn.Module | None) -> nn.Module | None:
    """`module` itself, or for a transposed-weight layer a Linear view sharing its tensors."""
    if module is not None and is_transposed_linear(module):
        return as_linear(module, share=True)
    return module


def weight_in_layout(target: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """An `nn.Linear` weight `(out, in)` stored the way `target` stores it (`(in, out)` for a
    transposed-weight layer), e.g. to load a fused Linear into a fresh `transformers` GPT-2."""
    return weight.t().contiguous() if is_transposed_linear(target) else weight
