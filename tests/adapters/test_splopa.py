"""SPLoPALinear against an explicit dense Eq. 6 built with torch.kron."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spa import PrototypeBank, SPLoPALinear
from spa.errors import ConfigError, UnsupportedLayerError


def _expected_weight(layer: SPLoPALinear, base_weight: torch.Tensor) -> torch.Tensor:
    """W_s * (M_b kron J) + sum_i (M_b * B_i) kron (p_i q_i^T)."""
    rows, cols = layer.block_shape
    mask = layer.block_mask.float()
    weight = base_weight * torch.kron(mask, torch.ones(rows, cols))
    bank = layer.prototypes
    for i in range(bank.num_prototypes):
        prototype = bank.row_factors[i] @ bank.col_factors[i].T  # (p, q)
        weight = weight + torch.kron(mask * layer.block_weights[i], prototype)
    return weight


def _layer(out_features=12, in_features=8, block_shape=(3, 4), bank=None) -> SPLoPALinear:
    base = nn.Linear(in_features, out_features)
    layer = SPLoPALinear(base, block_shape, num_prototypes=3, prototype_rank=2, bank=bank)
    base.weight.requires_grad_(False)
    nn.init.normal_(layer.block_weights)
    mask = torch.rand(layer.block_mask.shape) > 0.5
    mask[0, 0], mask[-1, -1] = True, False
    layer.block_mask.copy_(mask)
    return layer


def test_splopa_matches_explicit_eq6():
    layer = _layer()
    base_weight = layer.base.weight.detach().clone()
    x = torch.randn(2, 5, 8)
    expected = F.linear(x, _expected_weight(layer, base_weight), layer.base.bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)  # factored path
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)  # fused path
        torch.testing.assert_close(
            layer.delta_weight() + layer.masked_base_weight(),
            _expected_weight(layer, base_weight),
            rtol=1e-5,
            atol=1e-6,
        )
    assert not torch.allclose(expected, layer.base(x))


def test_splopa_factored_gradients_match_dense_eq6():
    layer = _layer()
    x = torch.randn(4, 8)
    layer(x).pow(2).sum().backward()
    factored = [p.grad.clone() for p in (layer.block_weights, layer.prototypes.row_factors)]
    layer.zero_grad()
    F.linear(x, _expected_weight(layer, layer.base.weight), layer.base.bias).pow(2).sum().backward()
    dense = [layer.block_weights.grad, layer.prototypes.row_factors.grad]
    for a, b in zip(factored, dense):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_splopa_shared_bank_is_one_object():
    bank = PrototypeBank((3, 4), num_prototypes=3, prototype_rank=2)
    first, second = _layer(bank=bank), _layer(out_features=6, bank=bank)
    assert first.prototypes is second.prototypes
    model = nn.Sequential(first, second)
    names = [n for n, _ in model.named_parameters()]
    assert sum("row_factors" in n for n in names) == 1
    state = model.state_dict()
    assert (
        state["0.prototypes.row_factors"].data_ptr() == state["1.prototypes.row_factors"].data_ptr()
    )


def test_splopa_rejects_bank_with_other_config():
    bank = PrototypeBank((3, 4), num_prototypes=5, prototype_rank=2)
    with pytest.raises(ConfigError, match="enc.q: shared PrototypeBank has.*num_prototypes=5"):
        SPLoPALinear(nn.Linear(8, 12), (3, 4), 3, 2, bank=bank, name="enc.q")


def test_splopa_rejects_non_divisible_shape_naming_layer():
    with pytest.raises(
        UnsupportedLayerError, match=r"encoder.layer.0.query: weight shape \(10, 8\).*\(4, 4\)"
    ):
        SPLoPALinear(nn.Linear(8, 10), (4, 4), name="encoder.layer.0.query")


def test_splopa_rejects_convolution():
    with pytest.raises(UnsupportedLayerError, match="conv: SPLoPA supports nn.Linear only"):
        SPLoPALinear(nn.Conv2d(4, 4, 3), (2, 2), name="conv")


def test_splopa_initial_output_is_near_base():
    base = nn.Linear(8, 12)
    layer = SPLoPALinear(base, (4, 4), num_prototypes=4, prototype_rank=1)
    x = torch.randn(3, 8)
    difference = (layer(x) - base(x)).abs().max()
    assert 0 < difference < 1e-2
