from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from spa.adapters.block_fine_pruning import BlockMaskedLinear
from spa.adapters.splopa import SPLoPALinear
from spa.errors import ConfigError
from spa.pruning.block_criteria import (
    BLOCK_CRITERIA,
    L0Criterion,
    MagnitudeCriterion,
    MovementCriterion,
    SoftMovementCriterion,
    create_block_criterion,
)


def _splopa() -> SPLoPALinear:
    return SPLoPALinear(nn.Linear(4, 4), (2, 2), num_prototypes=2, init_range=0.5, name="fc")


def _dense_adapted(layer: SPLoPALinear) -> torch.Tensor:
    """Eq. 6 with an all-ones mask, written with torch.kron."""
    prototypes = [
        layer.prototypes.row_factors[i] @ layer.prototypes.col_factors[i].T for i in range(2)
    ]
    delta = sum(torch.kron(layer.block_weights[i], prototypes[i]) for i in range(2))
    return (layer.base.weight + delta).detach()


def test_block_criteria_registry_names() -> None:
    assert BLOCK_CRITERIA.names() == ["l0", "magnitude", "movement", "soft_movement"]
    with pytest.raises(ConfigError, match="known: l0, magnitude, movement, soft_movement"):
        create_block_criterion("taylor")
    with pytest.raises(ConfigError, match="'movement'.*unexpected keyword"):
        create_block_criterion("movement", threshold=0.5)


def test_magnitude_scores_are_adapted_block_norms() -> None:
    layer = _splopa()
    layer.block_mask[1, 0] = False  # scores ignore the mask
    criterion = MagnitudeCriterion()
    criterion.attach({"fc": layer})
    weight = _dense_adapted(layer)
    expected = torch.tensor(
        [
            [torch.linalg.norm(weight[2 * a : 2 * a + 2, 2 * b : 2 * b + 2]) for b in range(2)]
            for a in range(2)
        ]
    )
    torch.testing.assert_close(criterion.scores()["fc"], expected)


def test_movement_scores_after_two_gradient_steps() -> None:
    layer = _splopa()
    layer.block_mask[0, 1] = False
    criterion = MovementCriterion(score_learning_rate=0.5)
    criterion.attach({"fc": layer})
    x, c = torch.randn(3, 4), torch.randn(3, 4)
    gradient = c.T @ x  # dL/dW' for L = sum(c * (x W'^T + b)), the same at every step
    optimizer = torch.optim.SGD([layer.block_weights], lr=0.1)
    expected = torch.zeros(2, 2)
    for _ in range(2):
        weight = _dense_adapted(layer)  # the unmasked adapted weight W_t before the step
        expected -= 0.5 * (weight * gradient).reshape(2, 2, 2, 2).sum(dim=(1, 3))
        (layer(x) * c).sum().backward()
        criterion.update_scores()
        optimizer.step()
        optimizer.zero_grad()
    torch.testing.assert_close(criterion.scores()["fc"].float(), expected)


def test_movement_forward_uses_mask_and_pruned_block_weights_still_learn() -> None:
    layer = _splopa()
    layer.block_mask[0, 1] = False
    criterion = MovementCriterion()
    criterion.attach({"fc": layer})
    x, c = torch.randn(3, 4), torch.randn(3, 4)
    out = layer(x)
    with torch.no_grad():
        masked = layer.fused_weight()
    torch.testing.assert_close(out, x @ masked.T + layer.base.bias)
    (out * c).sum().backward()
    prototypes = layer.prototypes.prototypes()  # (R, p, q)
    gradient_block = (c.T @ x)[0:2, 2:4]  # the pruned block (0, 1)
    expected = torch.stack([(prototypes[i] * gradient_block).sum() for i in range(2)])
    torch.testing.assert_close(layer.block_weights.grad[:, 0, 1], expected.detach())


def test_movement_on_fine_pruning_uses_the_trained_weight() -> None:
    layer = BlockMaskedLinear(nn.Linear(4, 4), (2, 2))
    criterion = MovementCriterion(score_learning_rate=1.0)
    criterion.attach({"fc": layer})
    x, c = torch.randn(3, 4), torch.randn(3, 4)
    (layer(x) * c).sum().backward()
    criterion.update_scores()
    expected = -(layer.base.weight * (c.T @ x)).reshape(2, 2, 2, 2).sum(dim=(1, 3))
    torch.testing.assert_close(criterion.scores()["fc"].float(), expected.detach())


def test_soft_movement_thresholds_scores_and_penalises_them() -> None:
    layer = _splopa()
    criterion = SoftMovementCriterion(threshold=0.2, penalty_weight=2.0)
    criterion.attach({"fc": layer})
    values = torch.tensor([[0.0, -3.0], [2.0, -1.0]])
    with torch.no_grad():
        criterion.state_tensors()[0].copy_(values)
    # sigmoid: 0.5, 0.047, 0.881, 0.269 -> only -3 falls below 0.2
    expected_mask = torch.tensor([[True, False], [True, True]])
    assert torch.equal(criterion.masks(0.1)["fc"], expected_mask)  # density is ignored
    sigmoids = [1 / (1 + math.exp(-v)) for v in (0.0, -3.0, 2.0, -1.0)]
    expected = 0.5 * 2.0 * sum(sigmoids) / 4
    assert float(criterion.penalty(0.5).detach()) == pytest.approx(expected)
    assert criterion.is_thresholded


def test_soft_movement_penalty_lowers_scores() -> None:
    layer = _splopa()
    criterion = SoftMovementCriterion(penalty_weight=4.0, score_learning_rate=1.0)
    criterion.attach({"fc": layer})
    criterion.penalty().backward()
    criterion.update_scores()
    # d/dS of 4 * mean(sigmoid(S)) at S = 0 is 4 * 0.25 / 4 = 0.25 per block
    torch.testing.assert_close(criterion.scores()["fc"].float(), torch.full((2, 2), -0.25))


def test_l0_expected_penalty_formula() -> None:
    layer = _splopa()
    criterion = L0Criterion(threshold=0.0, penalty_weight=3.0, temperature=0.5, stretch=(-0.2, 1.5))
    criterion.attach({"fc": layer})
    values = [1.0, -2.0, 0.5, 0.0]
    with torch.no_grad():
        criterion.state_tensors()[0].copy_(torch.tensor(values).reshape(2, 2))
    shift = 0.5 * math.log(0.2 / 1.5)
    expected = 3.0 * sum(1 / (1 + math.exp(-(v - shift))) for v in values) / 4
    assert float(criterion.penalty().detach()) == pytest.approx(expected)
    expected_mask = torch.tensor([[True, False], [True, False]])  # log_alpha > 0
    assert torch.equal(criterion.masks(0.9)["fc"], expected_mask)


def test_l0_samples_hard_concrete_gates() -> None:
    criterion = L0Criterion(temperature=0.5, stretch=(-0.1, 1.1))
    log_alpha = torch.tensor([[3.0, -3.0], [0.0, 1.0]])
    torch.manual_seed(7)
    uniform = torch.rand(2, 2).clamp(1e-6, 1 - 1e-6)
    stretched = torch.sigmoid((uniform.log() - (1 - uniform).log() + log_alpha) / 0.5) * 1.2 - 0.1
    torch.manual_seed(7)
    gates = criterion.sample_gates(log_alpha)
    torch.testing.assert_close(gates, stretched.clamp(0, 1))
    assert bool(((gates >= 0) & (gates <= 1)).all())


def test_l0_gate_is_deterministic_in_eval_mode() -> None:
    layer = _splopa().eval()
    criterion = L0Criterion(threshold=0.0, initial_log_alpha=1.0)
    criterion.attach({"fc": layer})
    with torch.no_grad():
        criterion.state_tensors()[0][0, 0] = -1.0
    expected = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    torch.testing.assert_close(criterion.gate("fc", layer), expected)


def test_l0_log_alpha_learns_through_the_forward() -> None:
    layer = _splopa()
    criterion = L0Criterion()
    criterion.attach({"fc": layer})
    before = criterion.scores()["fc"]
    (layer(torch.randn(3, 4)) ** 2).sum().backward()
    criterion.update_scores()
    assert not torch.equal(criterion.scores()["fc"], before)


def test_attach_twice_raises_and_detach_restores_plain_forward() -> None:
    layer = _splopa()
    first = MovementCriterion()
    first.attach({"fc": layer})
    with pytest.raises(ConfigError, match="fc: already gated"):
        MagnitudeCriterion().attach({"fc": layer})
    first.detach()
    assert layer.block_gate is None
    MagnitudeCriterion().attach({"fc": layer})


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: SoftMovementCriterion(threshold=1.5), "threshold"),
        (lambda: L0Criterion(stretch=(0.1, 1.1)), "stretch"),
        (lambda: MovementCriterion(score_learning_rate=0.0), "score_learning_rate"),
    ],
)
def test_criteria_reject_bad_options(factory, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        factory()


def test_soft_movement_and_l0_rank_scores_by_default() -> None:
    layer = _splopa()
    values = torch.tensor([[0.3, -0.2], [0.1, 0.4]])
    for criterion in (SoftMovementCriterion(), L0Criterion()):
        criterion.attach({"fc": layer})
        with torch.no_grad():
            criterion.state_tensors()[0].copy_(values)
        assert not criterion.is_thresholded
        # top-2 of four blocks at density 0.5: the two highest values, 0.4 and 0.3
        expected = torch.tensor([[True, False], [False, True]])
        assert torch.equal(criterion.masks(0.5)["fc"], expected)
        criterion.detach()


def test_l0_ranking_gate_zeroes_pruned_blocks_and_passes_their_gradient() -> None:
    layer = _splopa()
    layer.block_mask[1, 0] = False
    criterion = L0Criterion(initial_log_alpha=0.0)
    criterion.attach({"fc": layer})
    torch.manual_seed(3)
    gate = criterion.gate("fc", layer)
    # the hard-concrete sample by hand: s = sigmoid(z) * 1.2 - 0.1, z = logit(u) / beta at a = 0
    torch.manual_seed(3)
    uniform = torch.rand(2, 2, dtype=torch.float64).clamp(1e-6, 1 - 1e-6)
    z = (uniform.log() - (-uniform).log1p()) / (2 / 3)
    sample = torch.sigmoid(z) * 1.2 - 0.1
    assert 0 < float(sample[1, 0]) < 1  # unclamped, so its derivative is not zero
    kept = layer.block_mask
    torch.testing.assert_close(gate.detach()[kept], sample.clamp(0, 1)[kept].float())
    assert float(gate.detach()[1, 0]) == 0.0  # the pruned block is off in the forward ...
    gate[1, 0].backward()
    derivative = torch.sigmoid(z[1, 0]) * (1 - torch.sigmoid(z[1, 0])) / (2 / 3) * 1.2
    grad = criterion.state_tensors()[0].grad
    # ... and receives the sample's gradient (straight-through), so it can come back
    assert float(grad[1, 0]) == pytest.approx(float(derivative), rel=1e-5)
    assert float(grad.abs().sum() - grad[1, 0].abs()) == 0.0


def test_l0_ranking_gate_in_eval_mode_is_the_block_mask() -> None:
    layer = _splopa().eval()
    criterion = L0Criterion()
    criterion.attach({"fc": layer})
    assert criterion.gate("fc", layer) is None  # the layer gates with its block_mask


def test_learned_scores_keep_steps_below_float32_spacing() -> None:
    layer = _splopa()
    criterion = L0Criterion(initial_log_alpha=2.0, score_learning_rate=1e-2)
    criterion.attach({"fc": layer})
    log_alpha = criterion.state_tensors()[0]
    log_alpha.grad = torch.full_like(log_alpha, 1e-6)
    criterion.update_scores()
    # 2 - 1e-8 rounds back to 2 in float32 (spacing 2.4e-7); the scores must keep it
    assert torch.all(criterion.scores()["fc"] < 2.0)
    assert float(criterion.scores()["fc"][0, 0]) == pytest.approx(2.0 - 1e-8, abs=1e-12)
