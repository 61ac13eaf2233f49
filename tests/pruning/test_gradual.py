from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from spa import SPLoPAConfig, adapt
from spa.errors import ConfigError, SpaWarning
from spa.pruning.block_criteria import (
    L0Criterion,
    MagnitudeCriterion,
    MovementCriterion,
    SoftMovementCriterion,
)
from spa.pruning.gradual import (
    GradualBlockPruner,
    GradualPruningConfig,
    cubic_density,
    cubic_progress,
)


def _model() -> nn.Module:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    return adapt(model, SPLoPAConfig(block_shape=(2, 2), num_prototypes=3, init_range=0.5))


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 1.0),
        (10, 1.0),  # end of warm-up
        (60, 0.2 + 0.8 * 0.5**3),  # half-way: (1 - 50/100) ** 3
        (35, 0.2 + 0.8 * 0.75**3),
        (110, 0.2),  # end of pruning
        (500, 0.2),  # cool-down
    ],
)
def test_cubic_density_values(step: int, expected: float) -> None:
    density = cubic_density(step, final_density=0.2, warmup_steps=10, pruning_steps=100)
    assert density == pytest.approx(expected)


def test_cubic_density_from_lower_initial_density() -> None:
    density = cubic_density(
        5, final_density=0.1, warmup_steps=0, pruning_steps=10, initial_density=0.5
    )
    assert density == pytest.approx(0.1 + 0.4 * 0.5**3)


def test_cubic_progress_without_pruning_steps_jumps() -> None:
    assert cubic_progress(3, warmup_steps=4, pruning_steps=0) == 0.0
    assert cubic_progress(4, warmup_steps=4, pruning_steps=0) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"final_density": 1.5}, "final_density"),
        ({"final_density": 0.5, "initial_density": 0.4}, "exceeds initial_density"),
        ({"final_density": 0.5, "warmup_steps": -1}, "warmup_steps"),
    ],
)
def test_cubic_density_rejects_bad_values(kwargs: dict, match: str) -> None:
    arguments = {"warmup_steps": 0, "pruning_steps": 10} | kwargs
    with pytest.raises(ConfigError, match=match):
        cubic_density(0, **arguments)


def test_gradual_config_rejects_bad_update_every() -> None:
    with pytest.raises(ConfigError, match="update_every"):
        GradualPruningConfig(final_density=0.5, pruning_steps=4, update_every=0)


def test_gradual_config_rejects_unknown_scope() -> None:
    with pytest.raises(ConfigError, match="scope"):
        GradualPruningConfig(final_density=0.5, pruning_steps=4, scope="layer")


def test_gradual_config_total_steps() -> None:
    config = GradualPruningConfig(
        final_density=0.5, warmup_steps=2, pruning_steps=4, cooldown_steps=3
    )
    assert config.total_steps == 9


def _train(model: nn.Module, pruner: GradualBlockPruner, steps: int) -> list[float]:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    densities = []
    for _ in range(steps):
        loss = model(torch.randn(4, 8)).pow(2).mean() + pruner.penalty()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        pruner.step()
        densities.append(pruner.density())
    return densities


def test_gradual_pruner_follows_the_schedule_per_matrix() -> None:
    model = _model()
    config = GradualPruningConfig(final_density=0.25, warmup_steps=1, pruning_steps=4)
    pruner = GradualBlockPruner(model, MagnitudeCriterion(), config)
    _train(model, pruner, 6)
    for name, layer in pruner.layers.items():
        assert int(layer.block_mask.sum()) == 4, name  # 0.25 of a 4 x 4 block grid
    masks = pruner.finish()
    assert set(masks) == {"0", "2"}
    assert all(layer.block_gate is None for layer in pruner.layers.values())


def test_gradual_pruner_density_at_each_step_matches_schedule() -> None:
    model = _model()
    config = GradualPruningConfig(final_density=0.25, warmup_steps=1, pruning_steps=4)
    pruner = GradualBlockPruner(model, MovementCriterion(), config)
    densities = _train(model, pruner, 6)
    # After step t (1-based), masks follow the schedule at t; 16 blocks per matrix.
    expected = [round(config.density(t) * 16) / 16 for t in range(1, 7)]
    assert densities == pytest.approx(expected)


def test_gradual_pruner_update_every_holds_masks_between_updates() -> None:
    model = _model()
    config = GradualPruningConfig(
        final_density=0.25, warmup_steps=0, pruning_steps=4, update_every=3
    )
    pruner = GradualBlockPruner(model, MagnitudeCriterion(), config)
    densities = _train(model, pruner, 3)
    assert densities[:2] == [1.0, 1.0]
    assert densities[2] == pytest.approx(round(config.density(3) * 16) / 16)


def test_gradual_pruner_pruned_blocks_keep_receiving_updates() -> None:
    model = _model()
    config = GradualPruningConfig(final_density=0.5, warmup_steps=0, pruning_steps=1)
    pruner = GradualBlockPruner(model, MagnitudeCriterion(), config)
    _train(model, pruner, 1)
    layer = pruner.layers["0"]
    pruned = ~layer.block_mask
    assert bool(pruned.any())
    model(torch.randn(4, 8)).pow(2).mean().backward()
    grad = layer.block_weights.grad  # (R, n/p, m/q)
    assert bool((grad[:, pruned].abs() > 0).any())


def test_gradual_pruner_global_scope_keeps_global_fraction() -> None:
    model = _model()
    config = GradualPruningConfig(
        final_density=0.25, warmup_steps=0, pruning_steps=1, scope="global"
    )
    pruner = GradualBlockPruner(model, MagnitudeCriterion(), config)
    _train(model, pruner, 1)
    kept = sum(int(layer.block_mask.sum()) for layer in pruner.layers.values())
    assert kept == 8  # 0.25 of 32 blocks, distributed freely


def test_gradual_pruner_requires_block_layers() -> None:
    config = GradualPruningConfig(final_density=0.5, pruning_steps=1)
    with pytest.raises(ConfigError, match="no block layers"):
        GradualBlockPruner(nn.Linear(4, 4), MagnitudeCriterion(), config)


@pytest.mark.parametrize("criterion", [SoftMovementCriterion, L0Criterion])
def test_gradual_pruner_ranking_defaults_follow_the_schedule(criterion) -> None:
    model = _model()
    config = GradualPruningConfig(final_density=0.25, warmup_steps=1, pruning_steps=4)
    pruner = GradualBlockPruner(model, criterion(), config)
    densities = _train(model, pruner, 6)
    expected = [round(config.density(t) * 16) / 16 for t in range(1, 7)]  # 16 blocks per matrix
    assert densities == pytest.approx(expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpaWarning)
        pruner.finish()


def test_gradual_pruner_warns_when_the_schedule_is_cut_short() -> None:
    model = _model()
    config = GradualPruningConfig(final_density=0.25, warmup_steps=1, pruning_steps=8)
    pruner = GradualBlockPruner(model, MovementCriterion(), config)
    _train(model, pruner, 3)
    reached = round(config.density(3) * 16) / 16  # 0.25 + 0.75 * (1 - 2/8) ** 3, in 16ths
    with pytest.warns(SpaWarning, match=f"density {reached:.3f}.*step 3 of 9") as record:
        pruner.finish()
    assert "final_density=0.25" in str(record[0].message)


def test_gradual_pruner_tolerance_decides_the_warning() -> None:
    # the threshold rule keeps all 32 blocks (sigmoid(0) = 0.5 > 0.4) while the target is 0.5
    for tolerance, warns in ((0.6, False), (0.05, True)):
        model = _model()
        config = GradualPruningConfig(
            final_density=0.5, pruning_steps=1, density_tolerance=tolerance
        )
        pruner = GradualBlockPruner(model, SoftMovementCriterion(threshold=0.4), config)
        pruner.step()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pruner.finish()
        assert pruner.density() == 1.0
        assert any(issubclass(w.category, SpaWarning) for w in caught) is warns


def test_gradual_config_rejects_bad_density_tolerance() -> None:
    with pytest.raises(ConfigError, match="density_tolerance"):
        GradualPruningConfig(final_density=0.5, pruning_steps=4, density_tolerance=0.0)
