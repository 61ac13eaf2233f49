"""Automated gradual pruning (Zhu & Gupta, 2017) of block layers with any block criterion.

The cubic schedule keeps `initial_density` for `warmup_steps`, decays to `final_density` over
`pruning_steps` as

    d(t) = d_f + (d_i - d_f) * (1 - (t - warmup_steps) / pruning_steps) ** 3

and then stays at `d_f` (cool-down). Masked weights keep receiving gradient updates (the block
gates pass gradients straight through), so a pruned block can come back at a later mask update.
`GradualBlockPruner.finish` warns (`SpaWarning`) when the final density is far from `d_f`.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from spa.adapters.block_fine_pruning import block_prunable_layers
from spa.errors import ConfigError, SpaWarning
from spa.pruning.block_criteria import BlockCriterion
from spa.pruning.block_masking import Scope, apply_block_masks, block_density

logger = logging.getLogger(__name__)


def cubic_progress(step: int, *, warmup_steps: int, pruning_steps: int) -> float:
    """How far the cubic schedule has gone: `1 - (1 - clamp((t - warmup) / steps, 0, 1)) ** 3`.

    Args:
        step: the training step `t` (0-based).
        warmup_steps: steps at the initial density before pruning starts.
        pruning_steps: steps over which density decays (0: jump at the end of warm-up).

    Returns:
        0 during warm-up, 1 from the end of pruning on.
    """
    if pruning_steps <= 0:
        return 1.0 if step >= warmup_steps else 0.0
    fraction = min(max((step - warmup_steps) / pruning_steps, 0.0), 1.0)
    return 1.0 - (1.0 - fraction) ** 3


def cubic_density(
    step: int,
    *,
    final_density: float,
    warmup_steps: int,
    pruning_steps: int,
    initial_density: float = 1.0,
) -> float:
    """The density the cubic schedule prescribes at `step`.

    Args:
        step: the training step `t` (0-based).
        final_density: `d_f`, reached at `warmup_steps + pruning_steps`.
        warmup_steps: steps kept at `initial_density`.
        pruning_steps: steps of cubic decay.
        initial_density: `d_i`.

    Returns:
        `d_f + (d_i - d_f) * (1 - progress) ** 3`, clamped progress in [0, 1].

    Raises:
        ConfigError: for densities outside [0, 1], `final_density > initial_density`, or
            negative step counts.
    """
    _check_schedule(final_density, initial_density, warmup_steps, pruning_steps)
    remaining = 1.0 - cubic_progress(step, warmup_steps=warmup_steps, pruning_steps=pruning_steps)
    return final_density + (initial_density - final_density) * remaining


def _check_schedule(
    final_density: float, initial_density: float, warmup_steps: int, pruning_steps: int
) -> None:
    for field, value in (("final_density", final_density), ("initial_density", initial_density)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{field} must be in [0, 1], got {value!r}")
    if final_density > initial_density:
        raise ConfigError(
            f"final_density={final_density} exceeds initial_density={initial_density}; "
            "gradual pruning only removes blocks"
        )
    for field, value in (("warmup_steps", warmup_steps), ("pruning_steps", pruning_steps)):
        if not isinstance(value, int) or value < 0:
            raise ConfigError(f"{field} must be an integer >= 0, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class GradualPruningConfig:
    """Automated gradual pruning settings.

    Args:
        final_density: target fraction of blocks kept (top-k criteria); in [0, 1].
        warmup_steps: optimizer steps at `initial_density` before pruning starts.
        pruning_steps: optimizer steps of cubic decay to `final_density`.
        cooldown_steps: optimizer steps at `final_density` after pruning (informational: the
            schedule stays at the target for every later step).
        update_every: recompute masks every this many steps (`delta t` of the paper).
        scope: "local" (same density per matrix) or "global" ranking.
        initial_density: density during warm-up.
        density_tolerance: `finish` warns when the final density differs from `final_density`
            by more than this plus half a block of the smallest block grid (rounding); in (0, 1].
    """

    final_density: float
    warmup_steps: int = 0
    pruning_steps: int
    cooldown_steps: int = 0
    update_every: int = 1
    scope: Scope = "local"
    initial_density: float = 1.0
    density_tolerance: float = 0.05

    def __post_init__(self) -> None:
        _check_schedule(
            self.final_density, self.initial_density, self.warmup_steps, self.pruning_steps
        )
        if not isinstance(self.cooldown_steps, int) or self.cooldown_steps < 0:
            raise ConfigError(
                f"cooldown_steps must be an integer >= 0, got {self.cooldown_steps!r}"
            )
        if not isinstance(self.update_every, int) or self.update_every < 1:
            raise ConfigError(f"update_every must be an integer >= 1, got {self.update_every!r}")
        if self.scope not in ("local", "global"):
            raise ConfigError(f"scope must be 'local' or 'global', got {self.scope!r}")
        if not 0 < self.density_tolerance <= 1:
            raise ConfigError(
                f"density_tolerance must be in (0, 1], got {self.density_tolerance!r}"
            )

    @property
    def total_steps(self) -> int:
        """Warm-up plus pruning plus cool-down steps."""
        return self.warmup_steps + self.pruning_steps + self.cooldown_steps

    def density(self, step: int) -> float:
        """The scheduled density at `step` (see `cubic_density`)."""
        return cubic_density(
            step,
            final_density=self.final_density,
            warmup_steps=self.warmup_steps,
            pruning_steps=self.pruning_steps,
            initial_density=self.initial_density,
        )


class GradualBlockPruner:
    """Drives a block criterion over training with the cubic schedule.

    Use::

        pruner = GradualBlockPruner(model, create_block_criterion("movement"), config)
        for batch in data:
            loss = model(**batch).loss + pruner.penalty()
            loss.backward(); optimizer.step(); optimizer.zero_grad()
            pruner.step()
        masks = pruner.finish()

    Ranking criteria (every criterion with its default options) get the scheduled density at
    each mask update, so `finish` reaches `final_density`; thresholded ones (soft movement or
    L0 given a `threshold`) set their own density. Penalties (soft movement, L0) are scaled by
    the schedule's progress so that sparsity pressure also ramps up cubically. `finish` warns
    when the final density is far from the target, naming the option to change.

    Args:
        model: a model with block layers (`SPLoPAConfig` adapted, or `wrap_block_fine_pruning`).
        criterion: a fresh block criterion; it is attached to the model's block layers.
        config: the schedule.

    Raises:
        ConfigError: if the model has no block layers.
    """

    def __init__(
        self, model: nn.Module, criterion: BlockCriterion, config: GradualPruningConfig
    ) -> None:
        self.layers = dict(block_prunable_layers(model))
        if not self.layers:
            raise ConfigError(
                "model has no block layers; adapt it with SPLoPAConfig or wrap it with "
                "spa.adapters.block_fine_pruning.wrap_block_fine_pruning first"
            )
        self.criterion = criterion
        self.config = config
        self.step_count = 0
        criterion.attach(self.layers)
        self._update_masks()

    def scheduled_density(self) -> float:
        """The schedule's density at the current step.

        Returns:
            `config.density(step_count)`.
        """
        return self.config.density(self.step_count)

    def density(self) -> float:
        """The block layers' actual density now.

        Returns:
            Kept elements over all elements of the block layers' weights.
        """
        return block_density(self.layers)

    def penalty(self) -> torch.Tensor:
        """The criterion's regularisation term for the current step (add it to the loss).

        Returns:
            A scalar tensor; zero for magnitude and movement.
        """
        config = self.config
        scale = cubic_progress(
            self.step_count, warmup_steps=config.warmup_steps, pruning_steps=config.pruning_steps
        )
        return self.criterion.penalty(scale)

    def step(self) -> None:
        """Call once per optimizer step, after `backward`: update scores, then masks if due."""
        self.criterion.update_scores()
        self.step_count += 1
        if self.step_count % self.config.update_every == 0:
            self._update_masks()

    def _update_masks(self) -> None:
        masks = self.criterion.masks(self.scheduled_density(), self.config.scope)
        apply_block_masks(self.layers, masks)
        logger.debug(
            "step %d: scheduled density %.4f, block density %.4f",
            self.step_count,
            self.scheduled_density(),
            self.density(),
        )

    def finish(self) -> dict[str, torch.Tensor]:
        """Apply the final masks, remove the criterion's gates and return the masks.

        Returns:
            The final boolean block mask per layer name (what a task keeps).
        """
        self._update_masks()
        self.criterion.detach()
        reached = self.density()
        logger.info("gradual pruning finished: block density %.4f", reached)
        message = self._density_warning(reached)
        if message is not None:
            warnings.warn(message, SpaWarning, stacklevel=2)
        return {name: layer.block_mask.clone() for name, layer in self.layers.items()}

    def _density_warning(self, reached: float) -> str | None:
        """Why the final density misses the target, or None when it is close enough."""
        config = self.config
        sizes = [layer.block_mask.numel() for layer in self.layers.values()]
        grid = min(sizes) if config.scope == "local" else sum(sizes)
        if abs(reached - config.final_density) <= config.density_tolerance + 0.5 / grid:
            return None
        end = config.warmup_steps + config.pruning_steps
        if self.step_count < end:
            cause = (
                f"the schedule stopped at step {self.step_count} of {end}; train for "
                "warmup_steps + pruning_steps optimizer steps, or lower them"
            )
        else:
            advice = getattr(self.criterion, "density_advice", None)
            cause = (
                advice(reached, config.final_density)
                if advice is not None
                else f"{type(self.criterion).__name__} sets the density itself; change its options"
            )
        return (
            f"gradual block pruning ended at block density {reached:.3f}, far from the target "
            f"final_density={config.final_density}: {cause}"
        )
