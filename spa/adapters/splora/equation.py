"""Eq. 4 of the paper, the one implementation training, fusing, accounting and bundles call::

    W_t = W_s * (m_row m_col^T) + (W_down * m_row 1^T)(W_up * 1 m_col^T)

For convolutions the `out x in/groups` adapter product is added at the kernel's centre tap.
"""

from __future__ import annotations

import torch

from spa.adapters.masks import outer_mask

# Index of the kernel's centre tap, `(:, :, k0 // 2, ...)`, or None for a Linear weight.
Tap = tuple | None


def masked_factors(
    down: torch.Tensor, up: torch.Tensor, out_mask: torch.Tensor, in_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(W_down * m_row 1^T, W_up * 1 m_col^T)`."""
    return down * out_mask[:, None], up * in_mask[None, :]


def add_low_rank(
    weight: torch.Tensor, down: torch.Tensor, up: torch.Tensor, tap: Tap
) -> torch.Tensor:
    """`weight + down @ up`, placed at the centre tap `tap` for conv weights (a new tensor).

    Args:
        weight: `(out, in/groups, *kernel)` (already masked).
        down: masked `(out, r)` factor.
        up: masked `(r, in/groups)` factor.
        tap: centre-tap index for conv weights, None for Linear.
    """
    matrix = down @ up  # (out, in/groups)
    if tap is None:
        return weight + matrix
    weight = weight.clone()
    weight[tap] += matrix  # (out, in/groups, *kernel): only the centre tap changes
    return weight


def add_low_rank_(
    weight: torch.Tensor, down: torch.Tensor, up: torch.Tensor, tap: Tap
) -> torch.Tensor:
    """`weight += down @ up` in place (at the centre tap for conv weights), without autograd.

    The in-place form of `add_low_rank` for derived weights that need no gradient, rounding
    exactly as it does (the product, then the sum): the only other full-size tensor is the
    product, freed on return.
    """
    matrix = down @ up  # (out, in/groups)
    if tap is None:
        return weight.add_(matrix)
    weight[tap] += matrix  # (out, in/groups, *kernel): only the centre tap changes
    return weight


def splora_weight(
    base_weight: torch.Tensor,
    out_mask: torch.Tensor,
    in_mask: torch.Tensor,
    down: torch.Tensor | None,
    up: torch.Tensor | None,
    tap: Tap,
) -> torch.Tensor:
    """`W_t` of Eq. 4 from plain tensors.

    Args:
        base_weight: `W_s`, `(out, in/groups, *kernel)`.
        out_mask: `m_row`, `(out,)` bool.
        in_mask: `m_col`, `(in/groups,)` bool.
        down: `W_down`, `(out, r)`, or None for the fine-pruning form (no adapter).
        up: `W_up`, `(r, in/groups)`, or None.
        tap: centre-tap index for conv weights, None for Linear.

    Returns:
        The fused weight, same shape as `base_weight`.
    """
    weight = base_weight * outer_mask(out_mask, in_mask, base_weight.dim())
    if down is None:
        return weight
    return add_low_rank(weight, *masked_factors(down, up, out_mask, in_mask), tap)
