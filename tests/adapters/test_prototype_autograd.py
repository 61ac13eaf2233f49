"""SPLoPA's fused training path: gradients equal autograd through the dense Eq. 6."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spa.adapters.masks import expand_block_mask
from spa.adapters.splopa import PrototypeBank, SPLoPALinear


def _dense_eq6(layer: SPLoPALinear, block_weights, rows, cols) -> torch.Tensor:
    """W_t = W_s * (M kron J) + sum_i (M * B_i) kron (p_i q_i^T), with torch.kron."""
    mask = layer.block_mask.float()
    weight = layer.base.weight.detach() * expand_block_mask(mask, layer.block_shape)
    for i in range(block_weights.shape[0]):
        weight = weight + torch.kron(mask * block_weights[i], rows[i] @ cols[i].T)
    return weight


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("leading", [(5,), (2, 3)])
def test_fused_training_gradients_match_dense_reference(shared, leading):
    torch.manual_seed(0)
    base = nn.Linear(12, 8)
    bank = PrototypeBank((4, 3), 3, 2) if shared else None
    layer = SPLoPALinear(base, block_shape=(4, 3), num_prototypes=3, prototype_rank=2, bank=bank)
    base.requires_grad_(False)
    with torch.no_grad():
        layer.block_weights.normal_()
        layer.block_mask.copy_(torch.rand(layer.block_mask.shape) > 0.4)
    x = torch.randn(*leading, 12, requires_grad=True)
    target = torch.randn(*leading, 8)

    out = layer(x)
    ((out - target) ** 2).sum().backward()
    got = [
        x.grad,
        layer.block_weights.grad,
        layer.prototypes.row_factors.grad,
        layer.prototypes.col_factors.grad,
    ]

    reference = [
        t.detach().clone().requires_grad_(True)
        for t in (
            x,
            layer.block_weights,
            layer.prototypes.row_factors,
            layer.prototypes.col_factors,
        )
    ]
    weight = _dense_eq6(layer, *reference[1:])
    expected_out = nn.functional.linear(reference[0], weight, base.bias)
    ((expected_out - target) ** 2).sum().backward()
    torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=1e-5)
    for actual, ref in zip(got, reference):
        torch.testing.assert_close(actual, ref.grad, rtol=1e-4, atol=1e-5)
    assert layer.block_weights.grad[:, ~layer.block_mask].abs().max() == 0  # masked blocks


def test_fused_path_not_used_when_base_trains():
    torch.manual_seed(0)
    layer = SPLoPALinear(nn.Linear(6, 4), block_shape=(2, 3), num_prototypes=2)
    x = torch.randn(3, 6)
    layer(x).sum().backward()
    assert layer.base.weight.grad is not None  # the base weight trains through autograd
