"""Eq. 6 of the paper, the one implementation training, fusing, scoring and bundles call::

W_t = W_s * (M_b kron J) + sum_i (M_b * B_i) kron (p_i q_i^T)
"""

from __future__ import annotations

import torch

from spa.adapters.masks import expand_block_mask


def prototype_matrices(row_factors: torch.Tensor, col_factors: torch.Tensor) -> torch.Tensor:
    """Dense prototypes `P_i = p_i q_i^T`, `(R, p, q)`, from `(R, p, r)` and `(R, q, r)` factors."""
    return torch.einsum("ick,ibk->icb", row_factors, col_factors)


def block_delta(block_weights: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """`sum_i B_i kron P_i` as a dense `(n, m)` matrix.

    Args:
        block_weights: `(R, n/p, m/q)` (masked or not).
        prototypes: `(R, p, q)`.
    """
    _, grid_rows, grid_cols = block_weights.shape
    _, rows, cols = prototypes.shape
    delta = torch.einsum("iaj,icb->acjb", block_weights, prototypes)  # (n/p, p, m/q, q)
    return delta.reshape(grid_rows * rows, grid_cols * cols)


def splopa_weight(
    base_weight: torch.Tensor,
    block_mask: torch.Tensor,
    block_weights: torch.Tensor,
    row_factors: torch.Tensor,
    col_factors: torch.Tensor,
) -> torch.Tensor:
    """`W_t` of Eq. 6 from plain tensors.

    Args:
        base_weight: `W_s`, `(n, m)`.
        block_mask: `M_b`, `(n/p, m/q)` bool.
        block_weights: `B`, `(R, n/p, m/q)`.
        row_factors: `p_i` stacked, `(R, p, r)`.
        col_factors: `q_i` stacked, `(R, q, r)`.

    Returns:
        The fused `(n, m)` weight.
    """
    block_shape = (row_factors.shape[1], col_factors.shape[1])
    masked = base_weight * expand_block_mask(block_mask, block_shape)
    prototypes = prototype_matrices(row_factors, col_factors)
    return masked + block_delta(block_weights * block_mask, prototypes)
