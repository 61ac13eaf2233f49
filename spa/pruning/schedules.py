"""Iterative pruning schedules and the paper's learning-rate schedule, as pure functions."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from spa.errors import ConfigError


def iterative_densities(step: float = 0.05, target: float = 0.05) -> list[float]:
    """Densities visited by iterative pruning: `1 - step, 1 - 2 step, ...` down to `target`.

    Each step removes `step` of the original weights; the last density is exactly `target`.

    Args:
        step: fraction of the original weights removed per step, in (0, 1).
        target: final density, in (0, 1].

    Returns:
        The densities in visiting order (empty if `target` is 1).

    Raises:
        ConfigError: for a step or target outside its range.
    """
    if not 0.0 < step < 1.0:
        raise ConfigError(f"iterative schedule: step must be in (0, 1), got {step!r}")
    if not 0.0 < target <= 1.0:
        raise ConfigError(f"iterative schedule: target must be in (0, 1], got {target!r}")
    densities = []
    index = 1
    while True:
        value = round(1.0 - index * step, 10)
        if value <= target + 1e-9:
            break
        densities.append(value)
        index += 1
    if target < 1.0:
        densities.append(target)
    return densities


@dataclass(frozen=True, kw_only=True)
class IterativeSchedule:
    """Train `initial_epochs` unpruned, then prune `step` of the weights and train, repeatedly.

    Args:
        initial_epochs: E0, epochs before the first pruning step (>= 0).
        epochs_per_step: E, epochs after every pruning step (>= 0).
        step: fraction of the original weights removed per step; the paper uses 0.05.
        target: final density; default 0.05.
    """

    initial_epochs: int = 0
    epochs_per_step: int = 1
    step: float = 0.05
    target: float = 0.05

    def __post_init__(self) -> None:
        for field in ("initial_epochs", "epochs_per_step"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(
                    f"IterativeSchedule: {field} must be an integer >= 0, got {value!r}"
                )
        iterative_densities(self.step, self.target)  # validates step and target

    def densities(self) -> list[float]:
        """The densities visited, in order (see `iterative_densities`)."""
        return iterative_densities(self.step, self.target)


def paper_lr_factor(epoch: int, epochs: int, reduction: float = 5.0) -> float:
    """Learning-rate factor in a training block: divided by `reduction` each quarter.

    Args:
        epoch: epoch index within the block, from 0.
        epochs: epochs in the block.
        reduction: divisor applied at each quarter (5 in the paper).

    Returns:
        `reduction ** -floor(4 * epoch / epochs)`.
    """
    if epochs <= 0:
        return 1.0
    return reduction ** -math.floor(4 * epoch / epochs)


def paper_optimizer(
    model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4
) -> torch.optim.SGD:
    """SGD with momentum 0.9 and weight decay 5e-4 over the trainable parameters (the paper's).

    Args:
        model: the model to train.
        lr: base learning rate.
        momentum: SGD momentum.
        weight_decay: L2 weight decay.

    Returns:
        The optimizer.
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)


def paper_scheduler(
    optimizer: torch.optim.Optimizer, epochs: int, reduction: float = 5.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-epoch scheduler for one training block: LR / `reduction` each quarter of `epochs`.

    Call `scheduler.step()` once per epoch.

    Args:
        optimizer: e.g. from `paper_optimizer`.
        epochs: epochs in the block.
        reduction: divisor per quarter.

    Returns:
        A `LambdaLR` scheduler.
    """
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: paper_lr_factor(epoch, epochs, reduction)
    )
