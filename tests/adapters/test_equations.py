"""Eq. 4 and Eq. 6 as pure functions, against dense computations written out here."""

from __future__ import annotations

import pytest
import torch

from spa.adapters.splopa.equation import splopa_weight
from spa.adapters.splora.equation import splora_weight


@pytest.mark.parametrize("kernel", [(), (3,), (3, 3), (3, 1, 5)])
def test_splora_weight_is_eq4(kernel):
    out_channels, in_channels, rank = 5, 4, 2
    base = torch.randn(out_channels, in_channels, *kernel)
    out_mask = torch.tensor([1, 0, 1, 1, 0], dtype=torch.bool)
    in_mask = torch.tensor([0, 1, 1, 1], dtype=torch.bool)
    down, up = torch.randn(out_channels, rank), torch.randn(rank, in_channels)
    tap = (slice(None), slice(None)) + tuple(k // 2 for k in kernel) if kernel else None
    expected = base.clone()
    for o in range(out_channels):
        for i in range(in_channels):
            keep = bool(out_mask[o]) and bool(in_mask[i])
            expected[o, i] = base[o, i] * keep
            centre = tuple(k // 2 for k in kernel)
            if keep:
                expected[(o, i) + centre] += sum(down[o, j] * up[j, i] for j in range(rank))
    result = splora_weight(base, out_mask, in_mask, down, up, tap)
    torch.testing.assert_close(result, expected, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(result, base * 1.0)


def test_splora_weight_without_factors_is_the_masked_base():
    base = torch.randn(3, 2)
    out_mask, in_mask = torch.tensor([True, False, True]), torch.tensor([True, False])
    expected = base * torch.outer(out_mask.float(), in_mask.float())
    assert torch.equal(splora_weight(base, out_mask, in_mask, None, None, None), expected)


def test_splopa_weight_is_eq6():
    p, q, num, rank = 2, 3, 4, 2
    base = torch.randn(3 * p, 2 * q)
    block_mask = torch.tensor([[1, 0], [1, 1], [0, 1]], dtype=torch.bool)
    block_weights = torch.randn(num, 3, 2)
    rows, cols = torch.randn(num, p, rank), torch.randn(num, q, rank)
    expected = base * torch.kron(block_mask.float(), torch.ones(p, q))
    for i in range(num):
        prototype = rows[i] @ cols[i].T  # p_i q_i^T
        expected += torch.kron(block_mask.float() * block_weights[i], prototype)
    result = splopa_weight(base, block_mask, block_weights, rows, cols)
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-5)
