"""Block pruning criteria: Magnitude, Movement, Soft Movement and L0 regularisation.

A criterion is attached to a model's block layers (`SPLoPALinear` / `BlockMaskedLinear`). It
owns its training-time state (movement scores, L0 log-alphas) in plain tensors held by the
criterion, never in the model, so a task bundle keeps only the final block masks. While
attached, it gates each layer's training forward through the layer's `block_gate` hook.

Scores are computed on the *adapted* weight (SPLoPA: `W_s + sum_i B_i kron P_i`), so SPLoPA and
fine-pruning share one code path. Per criterion:

- **magnitude**: score = Frobenius norm of each adapted block; top-k.
- **movement** (Sanh et al., 2020): learned scores `S`, forward gate = current top-k mask,
  straight-through backward, so `dL/dS_b = <W_b, dL/dW'_b>` and plain SGD accumulates
  `S_b = -lr * sum_t <W_b, dL/dW'_b>`; top-k.
- **soft_movement** (Sanh et al., 2020): the same scores plus the penalty
  `lambda * mean_b sigmoid(S_b)`. By default (`threshold=None`) masks keep the top-k scores at
  the schedule's density; with a number, masks are `sigmoid(S) > threshold` as in the paper and
  the final density is an outcome of `lambda`.
- **l0** (Louizos et al., 2018): hard-concrete gates per block with log-alpha `a`, temperature
  `beta`, stretch `(gamma, zeta)`; expected-L0 penalty `lambda * mean_b sigmoid(a_b - beta *
  log(-gamma / zeta))`. By default (`threshold=None`) masks keep the top-k log-alphas at the
  schedule's density; with a number, the deterministic gate is `1[a_b > threshold]` (the paper's
  0: the gate's median is above 1/2 exactly when `a_b > 0`) and the final density is an outcome.

Why the default ranks (issue 12): the penalties are means over all blocks and the scores follow
plain SGD, so one step moves a score by at most `lr * lambda / (4 * blocks)` through the penalty.
With the former defaults (`lr = 1e-2`, `lambda = 1`, soft movement's threshold 0.1) the penalty
alone needs at least `880 * blocks` steps to take a score from 0 to `sigmoid(S) < 0.1`, and at
least `800 * blocks` to take a log-alpha from 2 to 0 (BERT-base's 72 projections in 32 x 32
blocks have 82,944 blocks), so a schedule of the usual length pruned nothing. Scaling `lambda`
to the schedule length would make blocks cross the threshold, but how many cross depends on the
task's gradient scale, not on the target. Ranking the learned scores at every mask update
reaches exactly the scheduled density (the final update enforces `final_density`) while the
penalty keeps shaping which blocks rank low (on its own it moves every score the same way in
order, so it never reorders blocks by itself). `GradualBlockPruner.finish` warns when the final
density ends far from the target (a thresholded criterion, or a schedule cut short).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from spa._registry import Registry
from spa.errors import ConfigError
from spa.pruning.block_masking import (
    BlockCriterion,
    Scope,
    adapted_weight,
    block_sums,
)

BLOCK_CRITERIA: Registry = Registry("block criterion")


def _check_positive(field: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{field} must be > 0, got {value!r}")


def _descend(tensors, learning_rate: float) -> None:
    """One plain SGD step on learned score tensors: `t -= lr * dL/dt`, then clear the gradient."""
    with torch.no_grad():
        for tensor in tensors:
            if tensor.grad is not None:
                tensor -= learning_rate * tensor.grad
                tensor.grad = None


def _learned_state(mask: torch.Tensor, value: float) -> torch.Tensor:
    """A leaf score tensor like `mask`, in float64 (not on MPS): scores add up tiny SGD steps
    that a float32 log-alpha of 2 (spacing 2.4e-7) rounds away, leaving ties top-k breaks by
    position."""
    dtype = torch.float32 if mask.device.type == "mps" else torch.float64
    return torch.full(mask.shape, value, dtype=dtype, device=mask.device, requires_grad=True)


def _threshold_advice(criterion, rule: str, reached: float, target: float, more: str = "") -> str:
    """The options that move a thresholded criterion's final density towards `target`."""
    if reached > target:
        change = (
            f"raise penalty_weight (now {criterion.penalty_weight}) or score_learning_rate "
            f"(now {criterion.score_learning_rate}){more}"
        )
    else:
        change = f"lower penalty_weight (now {criterion.penalty_weight})"
    return (
        f"{rule}, so penalty_weight decides the density: {change}, or pass threshold=None to "
        "rank the learned scores at the schedule's density"
    )


@BLOCK_CRITERIA.register("magnitude")
class MagnitudeCriterion(BlockCriterion):
    """Block score = Frobenius norm of the adapted block weight."""

    def scores(self) -> dict[str, torch.Tensor]:
        """Frobenius norm of every adapted block.

        Returns:
            A `(n/p, m/q)` tensor per layer name.
        """
        return {
            name: block_sums(adapted_weight(layer).pow(2), layer.block_shape).sqrt()
            for name, layer in self.layers.items()
        }


@BLOCK_CRITERIA.register("movement")
class MovementCriterion(BlockCriterion):
    """Learned block scores trained through a straight-through top-k mask.

    Args:
        score_learning_rate: SGD step applied to the scores by `update_scores`.
        initial_score: the scores' initial value.
    """

    def __init__(self, score_learning_rate: float = 1e-2, initial_score: float = 0.0) -> None:
        super().__init__()
        _check_positive("score_learning_rate", score_learning_rate)
        self.score_learning_rate = score_learning_rate
        self.initial_score = initial_score
        self._scores: dict[str, torch.Tensor] = {}

    def _create_state(self, name: str, layer: nn.Module) -> None:
        self._scores[name] = _learned_state(layer.block_mask, self.initial_score)

    def gate(self, name: str, layer: nn.Module) -> torch.Tensor:
        """The current mask in the forward, identity to the scores in the backward.

        Args:
            name: layer name.
            layer: the block layer.

        Returns:
            `block_mask + S - S.detach()`, a `(n/p, m/q)` straight-through gate.
        """
        score = self._scores[name]
        dtype = layer.base.weight.dtype
        return layer.block_mask.to(dtype) + (score - score.detach()).to(dtype)

    def scores(self) -> dict[str, torch.Tensor]:
        """The learned scores.

        Returns:
            A copy of `S` per layer name.
        """
        return {name: score.detach().clone() for name, score in self._scores.items()}

    def update_scores(self) -> None:
        """`S -= lr * dL/dS` for every layer, then clear the gradients."""
        _descend(self._scores.values(), self.score_learning_rate)

    def state_tensors(self) -> list[torch.Tensor]:
        """The score tensors.

        Returns:
            The leaf tensors `S`, one per layer.
        """
        return list(self._scores.values())


@BLOCK_CRITERIA.register("soft_movement")
class SoftMovementCriterion(MovementCriterion):
    """Movement scores with the sparsity penalty `lambda * mean_b sigmoid(S_b)`.

    By default the masks keep the top-k scores at the schedule's density, so the target is
    reached (see the module docstring for why); with a `threshold`, masks are
    `sigmoid(S) > threshold` (Sanh et al.) and `lambda` decides the final density.

    Args:
        threshold: None ranks the scores at the scheduled density; a number in (0, 1) keeps
            the blocks with `sigmoid(S) > threshold` and ignores the schedule's density.
        penalty_weight: `lambda` of the penalty `lambda * mean_b sigmoid(S_b)`.
        score_learning_rate: SGD step applied to the scores by `update_scores`.
        initial_score: the scores' initial value (0: `sigmoid = 0.5`).
    """

    def __init__(
        self,
        threshold: float | None = None,
        penalty_weight: float = 1.0,
        score_learning_rate: float = 1e-2,
        initial_score: float = 0.0,
    ) -> None:
        super().__init__(score_learning_rate, initial_score)
        if threshold is not None and not 0 < threshold < 1:
            raise ConfigError(f"threshold must be None or in (0, 1), got {threshold!r}")
        _check_positive("penalty_weight", penalty_weight)
        self.threshold = threshold
        self.penalty_weight = penalty_weight

    @property
    def is_thresholded(self) -> bool:
        """True when a `threshold` sets the masks (the density is then an outcome)."""
        return self.threshold is not None

    def masks(self, density: float, scope: Scope = "local") -> dict[str, torch.Tensor]:
        """Top-k scores at `density`, or `sigmoid(S) > threshold` when a threshold is set.

        Args:
            density: fraction of blocks kept (unused with a threshold).
            scope: "local" or "global" ranking (unused with a threshold).

        Returns:
            Boolean masks per layer name.
        """
        if self.threshold is None:
            return super().masks(density, scope)
        return {
            name: torch.sigmoid(score.detach()) > self.threshold
            for name, score in self._scores.items()
        }

    def density_advice(self, reached: float, target: float) -> str:
        """Which options move the final density (`reached`) towards `target`; one sentence."""
        rule = f"soft_movement keeps blocks with sigmoid(S) > threshold={self.threshold}"
        return _threshold_advice(self, rule, reached, target)

    def penalty(self, scale: float = 1.0) -> torch.Tensor:
        """`scale * lambda * mean over all blocks of sigmoid(S)`.

        Args:
            scale: schedule factor in [0, 1].

        Returns:
            A float32 scalar tensor with autograd to the scores.
        """
        scores = torch.cat([score.flatten() for score in self._scores.values()])
        return (scale * self.penalty_weight * torch.sigmoid(scores).mean()).float()


@BLOCK_CRITERIA.register("l0")
class L0Criterion(BlockCriterion):
    """Hard-concrete stochastic gates per block with an expected-L0 penalty.

    By default the masks keep the top-k log-alphas at the schedule's density, so the target is
    reached (see the module docstring for why): a kept block's training gate is a
    hard-concrete sample, a pruned block's gate is 0 in the forward with the sample's gradient
    (straight-through, as in movement pruning), so pruned blocks can come back. With a
    `threshold`, every block's training gate is a sample and the deterministic mask is
    `log_alpha > threshold` (Louizos et al.: 0); `lambda` then decides the final density.

    Args:
        threshold: None ranks the log-alphas at the scheduled density; a number keeps the
            blocks with `log_alpha > threshold` and ignores the schedule's density.
        penalty_weight: `lambda` of the expected-L0 penalty (mean over blocks).
        temperature: `beta` of the hard-concrete distribution.
        stretch: `(gamma, zeta)` with `gamma < 0 < 1 < zeta`.
        initial_log_alpha: the log-alphas' initial value (gates mostly open at 2).
        score_learning_rate: SGD step applied to the log-alphas by `update_scores`.
    """

    def __init__(
        self,
        threshold: float | None = None,
        penalty_weight: float = 1.0,
        temperature: float = 2 / 3,
        stretch: tuple[float, float] = (-0.1, 1.1),
        initial_log_alpha: float = 2.0,
        score_learning_rate: float = 1e-2,
    ) -> None:
        super().__init__()
        if threshold is not None and not math.isfinite(threshold):
            raise ConfigError(f"threshold must be None or a finite number, got {threshold!r}")
        _check_positive("penalty_weight", penalty_weight)
        _check_positive("temperature", temperature)
        _check_positive("score_learning_rate", score_learning_rate)
        gamma, zeta = stretch
        if not gamma < 0 < 1 < zeta:
            raise ConfigError(
                f"stretch must be (gamma, zeta) with gamma < 0 < 1 < zeta, got {stretch!r}"
            )
        self.threshold = threshold
        self.penalty_weight = penalty_weight
        self.temperature = temperature
        self.stretch = (gamma, zeta)
        self.initial_log_alpha = initial_log_alpha
        self.score_learning_rate = score_learning_rate
        self._log_alpha: dict[str, torch.Tensor] = {}

    @property
    def is_thresholded(self) -> bool:
        """True when a `threshold` sets the masks (the density is then an outcome)."""
        return self.threshold is not None

    def _create_state(self, name: str, layer: nn.Module) -> None:
        self._log_alpha[name] = _learned_state(layer.block_mask, self.initial_log_alpha)

    def sample_gates(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """Hard-concrete samples `clamp(sigmoid((log u - log(1-u) + a) / beta) (zeta - gamma) +
        gamma, 0, 1)` with `u ~ U(0, 1)`.

        Args:
            log_alpha: the gates' log-alphas.

        Returns:
            Gates in [0, 1] with autograd to `log_alpha`.
        """
        gamma, zeta = self.stretch
        uniform = torch.rand_like(log_alpha).clamp(1e-6, 1 - 1e-6)
        logits = (torch.log(uniform) - torch.log1p(-uniform) + log_alpha) / self.temperature
        return (torch.sigmoid(logits) * (zeta - gamma) + gamma).clamp(0.0, 1.0)

    def gate(self, name: str, layer: nn.Module) -> torch.Tensor | None:
        """A stochastic gate while the layer trains, the deterministic mask otherwise.

        Args:
            name: layer name.
            layer: the block layer (its `training` flag picks the mode).

        Returns:
            A `(n/p, m/q)` gate in [0, 1]; None (the layer's `block_mask`) when ranking in
            evaluation mode.
        """
        log_alpha = self._log_alpha[name]
        if not layer.training:
            if self.threshold is None:
                return None
            return (log_alpha.detach() > self.threshold).to(layer.base.weight.dtype)
        gates = self.sample_gates(log_alpha)
        if self.threshold is None:
            gates = torch.where(layer.block_mask, gates, gates - gates.detach())
        return gates.to(layer.base.weight.dtype)

    def scores(self) -> dict[str, torch.Tensor]:
        """The log-alphas (higher: the gate is more likely open).

        Returns:
            A copy of `log_alpha` per layer name.
        """
        return {name: value.detach().clone() for name, value in self._log_alpha.items()}

    def masks(self, density: float, scope: Scope = "local") -> dict[str, torch.Tensor]:
        """Top-k log-alphas at `density`, or `log_alpha > threshold` when a threshold is set.

        Args:
            density: fraction of blocks kept (unused with a threshold).
            scope: "local" or "global" ranking (unused with a threshold).

        Returns:
            Boolean masks per layer name.
        """
        if self.threshold is None:
            return super().masks(density, scope)
        return {name: value.detach() > self.threshold for name, value in self._log_alpha.items()}

    def density_advice(self, reached: float, target: float) -> str:
        """Which options move the final density (`reached`) towards `target`; one sentence."""
        rule = f"l0 keeps blocks with log_alpha > threshold={self.threshold}"
        more = f", or lower initial_log_alpha (now {self.initial_log_alpha})"
        return _threshold_advice(self, rule, reached, target, more)

    def penalty(self, scale: float = 1.0) -> torch.Tensor:
        """`scale * lambda * mean_b P(gate_b != 0)`, the expected-L0 norm per block.

        Args:
            scale: schedule factor in [0, 1].

        Returns:
            A float32 scalar tensor with autograd to the log-alphas.
        """
        gamma, zeta = self.stretch
        values = torch.cat([value.flatten() for value in self._log_alpha.values()])
        shift = self.temperature * math.log(-gamma / zeta)
        return (scale * self.penalty_weight * torch.sigmoid(values - shift).mean()).float()

    def update_scores(self) -> None:
        """`a -= lr * dL/da` for every layer, then clear the gradients."""
        _descend(self._log_alpha.values(), self.score_learning_rate)

    def state_tensors(self) -> list[torch.Tensor]:
        """The log-alpha tensors.

        Returns:
            The leaf tensors `log_alpha`, one per layer.
        """
        return list(self._log_alpha.values())


def create_block_criterion(name: str, **options: float) -> BlockCriterion:
    """Create a registered block criterion by name.

    Args:
        name: one of `BLOCK_CRITERIA.names()`.
        **options: the criterion's keyword arguments.

    Returns:
        A fresh criterion, not yet attached.

    Raises:
        ConfigError: for an unknown name or option.
    """
    factory = BLOCK_CRITERIA.get(name)
    try:
        return factory(**options)
    except TypeError as error:
        raise ConfigError(f"block criterion {name!r}: {error}") from error
