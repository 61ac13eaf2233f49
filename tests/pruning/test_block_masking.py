from __future__ import annotations

import pytest
import torch
from torch import nn

from spa import count_learned_parameters
from spa.adapters.block_fine_pruning import (
    BlockMaskedLinear,
    block_prunable_layers,
    wrap_block_fine_pruning,
)
from spa.adapters.splopa import SPLoPALinear
from spa.errors import ConfigError, NoTargetsError, UnsupportedLayerError
from spa.pruning.block_masking import (
    adapted_weight,
    apply_block_masks,
    block_density,
    block_sums,
    compute_block_masks,
    gated_weights,
)


def test_compute_block_masks_local_keeps_top_fraction_per_layer() -> None:
    scores = {
        "a": torch.tensor([[0.1, 0.9], [0.5, 0.3]]),
        "b": torch.tensor([[4.0, 1.0], [2.0, 3.0]]),
    }
    masks = compute_block_masks(scores, 0.5, "local")
    assert torch.equal(masks["a"], torch.tensor([[False, True], [True, False]]))
    assert torch.equal(masks["b"], torch.tensor([[True, False], [False, True]]))


def test_compute_block_masks_global_ranks_rms_normalised_scores() -> None:
    # RMS of a = sqrt((1 + 1 + 1 + 9) / 4) = sqrt(3); of b = sqrt((4 + 4 + 4 + 4) / 4) = 2.
    scores = {
        "a": torch.tensor([[1.0, 1.0], [1.0, 3.0]]),  # normalised: 0.577 x3, 1.732
        "b": torch.tensor([[2.0, 2.0], [2.0, 2.0]]),  # normalised: 1.0 x4
    }
    masks = compute_block_masks(scores, 5 / 8, "global")
    assert torch.equal(masks["a"], torch.tensor([[False, False], [False, True]]))
    assert torch.equal(masks["b"], torch.ones(2, 2, dtype=torch.bool))


def test_compute_block_masks_rounds_kept_count() -> None:
    masks = compute_block_masks({"a": torch.arange(10.0).reshape(2, 5)}, 0.25)
    assert int(masks["a"].sum()) == 3  # round(2.5) -> 3 (half up)
    assert torch.equal(masks["a"].flatten()[7:], torch.ones(3, dtype=torch.bool))


def test_compute_block_masks_rejects_bad_density_and_scope() -> None:
    with pytest.raises(ConfigError, match="density must be in"):
        compute_block_masks({"a": torch.ones(2, 2)}, 1.5)
    with pytest.raises(ConfigError, match="scope"):
        compute_block_masks({"a": torch.ones(2, 2)}, 0.5, "row")


def test_apply_block_masks_checks_names_and_shapes() -> None:
    layer = BlockMaskedLinear(nn.Linear(4, 4), (2, 2), name="fc")
    with pytest.raises(ConfigError, match="fc: block mask shape"):
        apply_block_masks({"fc": layer}, {"fc": torch.ones(3, 2, dtype=torch.bool)})
    with pytest.raises(ConfigError, match="unknown block layer 'other'"):
        apply_block_masks({"fc": layer}, {"other": torch.ones(2, 2, dtype=torch.bool)})


def test_block_density_counts_kept_elements() -> None:
    first = BlockMaskedLinear(nn.Linear(4, 4), (2, 2))
    second = BlockMaskedLinear(nn.Linear(8, 4), (2, 2))
    first.block_mask[0, 0] = False
    second.block_mask[:, :2] = False
    # kept elements: 3 * 4 + 4 * 4 = 28 of 16 + 32 = 48
    assert block_density({"a": first, "b": second}) == pytest.approx(28 / 48)


def test_block_masked_linear_forward_equals_dense_reference() -> None:
    base = nn.Linear(6, 4)
    layer = BlockMaskedLinear(base, (2, 3))
    layer.block_mask.copy_(torch.tensor([[True, False], [False, True]]))
    x = torch.randn(5, 6)
    mask = torch.kron(layer.block_mask.float(), torch.ones(2, 3))
    expected = x @ (base.weight * mask).T + base.bias
    torch.testing.assert_close(layer(x), expected)
    assert not torch.allclose(layer(x), base(x))


def test_block_masked_linear_counts_retained_blocks() -> None:
    model = wrap_block_fine_pruning(
        nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2)), (2, 2)
    )
    model[0].block_mask[0] = False  # 4 of 8 blocks pruned
    head = 4 * 2 + 2
    # p*q*||M_b||_0 + bias (the bias trains in fine-pruning) + head
    assert count_learned_parameters(model) == 2 * 2 * 4 + 4 + head


def test_wrap_block_fine_pruning_skips_head_and_indivisible_layers() -> None:
    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 3), nn.Linear(3, 2))
    wrap_block_fine_pruning(model, (2, 2))
    assert [name for name, _ in block_prunable_layers(model)] == ["0"]
    assert type(model[1]) is nn.Linear  # (3, 4) is not divisible by (2, 2)
    assert type(model[2]) is nn.Linear  # the head


def test_wrap_block_fine_pruning_errors() -> None:
    with pytest.raises(UnsupportedLayerError, match="1: weight shape"):
        wrap_block_fine_pruning(
            nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 3), nn.Linear(3, 2)),
            (2, 2),
            target_modules=["1"],
        )
    with pytest.raises(NoTargetsError, match="BlockFinePruningConfig: no layer was adapted"):
        wrap_block_fine_pruning(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2)), (2, 2))


def test_gated_weights_straight_through_gradients() -> None:
    layer = BlockMaskedLinear(nn.Linear(4, 4), (2, 2))
    gate = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    x = torch.randn(3, 4)
    upstream = torch.randn(3, 4)
    weight, block_weights = gated_weights(layer, gate)
    assert block_weights is None
    (nn.functional.linear(x, weight, layer.base.bias) * upstream).sum().backward()
    dense_grad = upstream.T @ x  # dL/dW' of L = sum(upstream * (x W'^T + b))
    torch.testing.assert_close(weight, layer.base.weight * torch.kron(gate, torch.ones(2, 2)))
    # Pruned blocks still receive the full gradient; the gate receives <W_block, dL/dW'_block>.
    torch.testing.assert_close(layer.base.weight.grad, dense_grad)
    expected_gate_grad = (layer.base.weight * dense_grad).reshape(2, 2, 2, 2).sum(dim=(1, 3))
    torch.testing.assert_close(gate.grad, expected_gate_grad.detach())


def test_adapted_weight_of_splopa_ignores_the_mask() -> None:
    layer = SPLoPALinear(nn.Linear(4, 4), (2, 2), num_prototypes=2, init_range=0.5)
    layer.block_mask[0, 1] = False
    prototypes = layer.prototypes.prototypes()
    delta = sum(
        torch.kron(layer.block_weights[i], prototypes[i]) for i in range(2)
    )  # Eq. 6 with M_b = all ones
    torch.testing.assert_close(adapted_weight(layer), (layer.base.weight + delta).detach())


def test_block_sums() -> None:
    values = torch.arange(16.0).reshape(4, 4)
    expected = torch.tensor([[0 + 1 + 4 + 5, 2 + 3 + 6 + 7], [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]])
    torch.testing.assert_close(block_sums(values, (2, 2)), expected.float())
