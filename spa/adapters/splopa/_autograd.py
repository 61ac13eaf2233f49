"""Training forward of SPLoPA as one matmul with the fused weight and a factored backward.

Forward runs `y = x W_t^T + b` with `W_t` of Eq. 6 (forming the dense adapter term costs
`R n m`, independent of the number of tokens `N`). Backward computes the input gradient with
`W_t` (as any linear layer must) but never the `n x m` weight gradient: with `g` the output
gradient, `x` the input, both cut into blocks (`g_n[a, j]`, `x_n[c, k]`), and the prototypes'
factors `p_i` (p x r) and `q_i` (q x r),

    G[i,s,n,a] = sum_j g_n[a,j] p_i[j,s]          X[i,s,n,c] = sum_k x_n[c,k] q_i[k,s]
    dL/dB_i    = M_b * sum_s G[i,s]^T X[i,s]
    dL/dp_i[j,s] = sum_{n,a} g_n[a,j] (X[i,s] (M_b*B_i)^T)[n,a]
    dL/dq_i[k,s] = sum_{n,c} x_n[c,k] (G[i,s] (M_b*B_i))[n,c]

which costs about `R r N (n + m + 2 n m / (p q))` instead of the `N n m` of a weight gradient
(issue 15: SPLoPA training below fine-tuning).
"""

from __future__ import annotations

import torch


class FusedPrototypes(torch.autograd.Function):
    """`y = x W_t^T + b` with `W_t` of Eq. 6, and the factored backward of the module docstring."""

    @staticmethod
    def forward(ctx, x, block_weights, row_factors, col_factors, layer):  # noqa: D102
        with torch.no_grad():
            weight = layer.masked_base_weight() + layer.delta_weight()  # (n, m)
        bias = layer.base.bias
        bias = None if bias is None else bias.detach()
        ctx.layer = layer
        ctx.save_for_backward(x, block_weights, row_factors, col_factors, weight)
        return torch.nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        x, block_weights, row_factors, col_factors, weight = ctx.saved_tensors
        layer = ctx.layer
        rows, cols = layer.block_shape
        mask = layer.block_mask.to(block_weights.dtype)  # (n/p, m/q)
        grad_x = grad_out @ weight if ctx.needs_input_grad[0] else None
        num, _, rank = row_factors.shape
        grads = grad_out.reshape(-1, grad_out.shape[-1])  # (N, n)
        inputs = x.reshape(-1, x.shape[-1])  # (N, m)
        tokens = grads.shape[0]
        grid_rows, grid_cols = grads.shape[1] // rows, inputs.shape[1] // cols
        # Block projections: (R*r, N*n/p) and (R*r, N*m/q), one GEMM each.
        row_flat = row_factors.permute(0, 2, 1).reshape(num * rank, rows)  # (R*r, p)
        col_flat = col_factors.permute(0, 2, 1).reshape(num * rank, cols)  # (R*r, q)
        g_blocks = grads.reshape(tokens * grid_rows, rows)  # (N*n/p, p)
        x_blocks = inputs.reshape(tokens * grid_cols, cols)  # (N*m/q, q)
        projected_g = (row_flat @ g_blocks.t()).view(num, rank, tokens, grid_rows)
        projected_x = (col_flat @ x_blocks.t()).view(num, rank, tokens, grid_cols)
        masked = block_weights * mask  # (R, n/p, m/q)
        grad_blocks = grad_rows = grad_cols = None
        if ctx.needs_input_grad[1]:
            # sum_s G[i,s]^T X[i,s]: contract tokens and rank in one batched GEMM per prototype.
            g_t = projected_g.permute(0, 3, 1, 2).reshape(num, grid_rows, rank * tokens)
            x_n = projected_x.reshape(num, rank * tokens, grid_cols)
            grad_blocks = torch.bmm(g_t, x_n) * mask  # (R, n/p, m/q)
        if ctx.needs_input_grad[2]:
            mixed = torch.matmul(projected_x, masked.transpose(1, 2).unsqueeze(1))  # (R,r,N,n/p)
            grad_rows = (mixed.reshape(num * rank, tokens * grid_rows) @ g_blocks).view(
                num, rank, rows
            )  # (R, r, p)
            grad_rows = grad_rows.transpose(1, 2)  # (R, p, r)
        if ctx.needs_input_grad[3]:
            mixed = torch.matmul(projected_g, masked.unsqueeze(1))  # (R, r, N, m/q)
            grad_cols = (mixed.reshape(num * rank, tokens * grid_cols) @ x_blocks).view(
                num, rank, cols
            )  # (R, r, q)
            grad_cols = grad_cols.transpose(1, 2)  # (R, q, r)
        return grad_x, grad_blocks, grad_rows, grad_cols, None
