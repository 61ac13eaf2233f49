"""Iterative density schedule and the paper's learning-rate schedule."""

from __future__ import annotations

import pytest
import torch

from spa.errors import ConfigError
from spa.pruning import (
    IterativeSchedule,
    iterative_densities,
    paper_lr_factor,
    paper_optimizer,
    paper_scheduler,
)


def test_iterative_densities_default_steps_of_five_percent_to_five_percent():
    densities = iterative_densities()
    assert densities == pytest.approx([1 - 0.05 * k for k in range(1, 20)])
    assert densities[-1] == 0.05 and len(densities) == 19


def test_iterative_densities_ends_exactly_at_target():
    assert iterative_densities(step=0.3, target=0.2) == pytest.approx([0.7, 0.4, 0.2])


def test_iterative_schedule_validates_fields():
    with pytest.raises(ConfigError, match="step must be in \\(0, 1\\), got 0"):
        IterativeSchedule(step=0)
    with pytest.raises(ConfigError, match="epochs_per_step must be an integer >= 0, got -1"):
        IterativeSchedule(epochs_per_step=-1)


def test_paper_lr_factor_divides_by_five_each_quarter():
    factors = [paper_lr_factor(epoch, 8) for epoch in range(8)]
    assert factors == pytest.approx([1, 1, 0.2, 0.2, 0.04, 0.04, 0.008, 0.008])


def test_paper_optimizer_and_scheduler():
    model = torch.nn.Linear(2, 2)
    model.bias.requires_grad_(False)
    optimizer = paper_optimizer(model, lr=0.1)
    group = optimizer.param_groups[0]
    assert group["momentum"] == 0.9 and group["weight_decay"] == 5e-4
    assert len(group["params"]) == 1
    scheduler = paper_scheduler(optimizer, epochs=4)
    rates = []
    for _ in range(4):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.1, 0.02, 0.004, 0.0008])
