"""Training forward of SPLoRA as one op with the fused weight and a cheap custom backward.

Forward runs the base layer once with `W_t` (Eq. 4). Backward computes the input gradient with
`W_t` (as any layer must) but never the full weight gradient: the factor gradients come from
rank-r projections of the input and of the output gradient,

    dL/dW_down = m_row * sum_n g_n (W_up x_n)^T,    dL/dW_up = m_col * sum_n (W_down^T g_n) x_n^T,

where `x_n` is the input at the centre tap of output position `n` and `g_n` the output gradient
there. That costs `r (in + out)` per position instead of the `out x in x k` of a weight gradient,
and writes no full-size activation besides the layer's own output (issue 2 benchmark). `W_t`
itself is formed in forward and again in backward, never kept in between (issue 22).
"""

from __future__ import annotations

import torch
from torch import nn

from spa.adapters import _conv
from spa.adapters.splora.equation import add_low_rank_, masked_factors


def supports_fused_training(base: nn.Module) -> bool:
    """True for layers the fused-weight autograd path handles (Linear, ungrouped zero-pad convs)."""
    if isinstance(base, nn.Linear):
        return True
    return base.groups == 1 and base.padding_mode == "zeros"


class FusedLowRank(torch.autograd.Function):
    """`y = layer(x; W_s * M + place(W_down_m W_up_m)) + b` with the factored backward above."""

    @staticmethod
    def forward(ctx, x, down, up, layer):  # noqa: D102 - documented on the class
        down_m, up_m = masked_factors(down, up, layer.out_mask, layer.in_mask)
        base = layer.base
        weight = fused_without_grad(layer, down_m, up_m)
        bias = layer.masked_bias()
        bias = None if bias is None else bias.detach()
        ctx.layer = layer
        ctx.save_for_backward(x, down_m, up_m)
        out = _conv.layer_forward(base, x, weight, bias)
        # A linear map of a 3-D input returns a view of its 2-D product; autograd forbids
        # in-place writes into a custom Function's view output, and host models write into a
        # layer's output (wav2vec2's SpecAugment): hand out a tensor of its own.
        return out.clone() if out._is_view() else out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        x, down_m, up_m = ctx.saved_tensors
        layer = ctx.layer
        base = layer.base
        grad_x = None
        if ctx.needs_input_grad[0]:
            # W_t is formed again rather than kept from forward: a layer holds no full-size
            # weight between its forward and backward (issue 22).
            grad_x = _input_grad(base, x, fused_without_grad(layer, down_m, up_m), grad_out)
        if isinstance(base, nn.Linear):
            inputs = x.reshape(-1, x.shape[-1])  # (N, in)
            grads = grad_out.reshape(-1, grad_out.shape[-1])  # (N, out)
            grad_down = grads.T @ (inputs @ up_m.T)  # (out, r)
            grad_up = (grads @ down_m).T @ inputs  # (r, in)
        else:
            centre = _conv.centre_samples(base, x)  # (B, in, *out_spatial)
            grad_down, grad_up = _factor_grads(centre, grad_out, down_m, up_m)
        grad_down = grad_down * layer.out_mask[:, None]
        grad_up = grad_up * layer.in_mask[None, :]
        return grad_x, grad_down, grad_up, None


def fused_without_grad(layer: nn.Module, down_m: torch.Tensor, up_m: torch.Tensor) -> torch.Tensor:
    """`W_t` of Eq. 4 from the masked factors, with one full-size allocation."""
    with torch.no_grad():
        weight = layer.masked_base_weight()
        if weight.data_ptr() == layer.base.weight.data_ptr():
            weight = weight.clone()
        return add_low_rank_(weight, down_m, up_m, layer.centre_tap())


def _input_grad(
    base: nn.Module, x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor
) -> torch.Tensor:
    if isinstance(base, nn.Linear):
        return grad_out @ weight
    dims = _conv.spatial_dims(base)
    grad_x, _, _ = torch.ops.aten.convolution_backward(
        grad_out,
        x,
        weight,
        None,
        list(base.stride),
        list(_conv.padding_tuple(base)),
        list(base.dilation),
        False,
        [0] * dims,
        1,
        [True, False, False],
    )
    return grad_x


def _factor_grads(
    centre: torch.Tensor, grad_out: torch.Tensor, down_m: torch.Tensor, up_m: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(dL/dW_down_m, dL/dW_up_m)` from centre-tap inputs and output gradients of a conv."""
    channels_last = centre.dim() in (4, 5) and all(
        t.permute(0, *range(2, t.dim()), 1).is_contiguous() for t in (centre, grad_out)
    )
    if channels_last:
        # Channels-last: (B*P, C) views are free, so each reduction is one large 2-D GEMM.
        inputs = centre.permute(0, *range(2, centre.dim()), 1).reshape(-1, centre.shape[1])
        grads = grad_out.permute(0, *range(2, grad_out.dim()), 1).reshape(-1, grad_out.shape[1])
        grad_down = grads.T @ (inputs @ up_m.T)  # (out, r)
        grad_up = (grads @ down_m).T @ inputs  # (r, in)
        return grad_down, grad_up
    batch = centre.shape[0]
    inputs = centre.reshape(batch, centre.shape[1], -1)  # (B, in, P)
    grads = grad_out.reshape(batch, grad_out.shape[1], -1)  # (B, out, P)
    # Batched GEMMs with the small factor broadcast over the batch: no copies of full-size
    # activations (a broadcast `matmul` transposes them; tiny 1x1 convs were as slow as the
    # layer itself on CPU).
    projected = torch.bmm(up_m.expand(batch, -1, -1), inputs)  # (B, r, P)
    grad_down = torch.bmm(grads, projected.transpose(1, 2)).sum(0)  # (out, r)
    back = torch.bmm(down_m.T.expand(batch, -1, -1), grads)  # (B, r, P)
    grad_up = torch.bmm(back, inputs.transpose(1, 2)).sum(0)  # (r, in)
    return grad_down, grad_up
