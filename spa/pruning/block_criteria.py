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
- **soft_movement**: the same scores, mask = `sigmoid(S) > threshold` (not top-k), with penalty
  `lambda * mean_b sigmoid(S_b)` driving sparsity; the final density is an outcome.
- **l0** (Louizos et al., 2018): hard-concrete gates per block with log-alpha `a`, temperature
  `beta`, stretch `(gamma, zeta)`; expected-L0 penalty `lambda * mean_b sigmoid(a_b - beta *
  log(-gamma / zeta))`; deterministic evaluation gate `1[a_b > 0]` (the gate's median is above
  1/2 exactly when `a_b > 0`); the final density is an outcome.
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
        mask = layer.block_mask
        self._scores[name] = torch.full(
            mask.shape, self.initial_score, device=mask.device, requires_grad=True
        )

    def gate(self, name: str, layer: nn.Module) -> torch.Tensor:
        """The current mask in the forward, identity to the scores in the backward.

        Args:
            name: layer name.
            layer: the block layer.

        Returns:
            `block_mask + S - S.detach()`, a `(n/p, m/q)` straight-through gate.
        """
        score = self._scores[name]
        return layer.block_mask.to(score.dtype) + (score - score.detach())

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
    """Movement scores thresholded at `sigmoid(S) > threshold`, with a sparsity penalty.

    Args:
        threshold: blocks with `sigmoid(S) > threshold` are kept; in (0, 1).
        penalty_weight: `lambda` of the penalty `lambda * mean_b sigmoid(S_b)`.
        score_learning_rate: SGD step applied to the scores by `update_scores`.
        initial_score: the scores' initial value (0: `sigmoid = 0.5`, every block kept).
    """

    is_thresholded = True

    def __init__(
        self,
        threshold: float = 0.1,
        penalty_weight: float = 1.0,
        score_learning_rate: float = 1e-2,
        initial_score: float = 0.0,
    ) -> None:
        super().__init__(score_learning_rate, initial_score)
        if not 0 < threshold < 1:
            raise ConfigError(f"threshold must be in (0, 1), got {threshold!r}")
        _check_positive("penalty_weight", penalty_weight)
        self.threshold = threshold
        self.penalty_weight = penalty_weight

    def masks(self, density: float, scope: Scope = "local") -> dict[str, torch.Tensor]:
        """`sigmoid(S) > threshold`; `density` and `scope` are ignored (density is an outcome).

        Args:
            density: unused.
            scope: unused.

        Returns:
            Boolean masks per layer name.
        """
        return {
            name: torch.sigmoid(score.detach()) > self.threshold
            for name, score in self._scores.items()
        }

    def penalty(self, scale: float = 1.0) -> torch.Tensor:
        """`scale * lambda * mean over all blocks of sigmoid(S)`.

        Args:
            scale: schedule factor in [0, 1].

        Returns:
            A scalar tensor with autograd to the scores.
        """
        scores = torch.cat([score.flatten() for score in self._scores.values()])
        return scale * self.penalty_weight * torch.sigmoid(scores).mean()


@BLOCK_CRITERIA.register("l0")
class L0Criterion(BlockCriterion):
    """Hard-concrete stochastic gates per block with an expected-L0 penalty.

    Args:
        penalty_weight: `lambda` of the expected-L0 penalty (mean over blocks).
        temperature: `beta` of the hard-concrete distribution.
        stretch: `(gamma, zeta)` with `gamma < 0 < 1 < zeta`.
        initial_log_alpha: the log-alphas' initial value (> 0 keeps every block at first).
        score_learning_rate: SGD step applied to the log-alphas by `update_scores`.
    """

    is_thresholded = True

    def __init__(
        self,
        penalty_weight: float = 1.0,
        temperature: float = 2 / 3,
        stretch: tuple[float, float] = (-0.1, 1.1),
        initial_log_alpha: float = 2.0,
        score_learning_rate: float = 1e-2,
    ) -> None:
        super().__init__()
        _check_positive("penalty_weight", penalty_weight)
        _check_positive("temperature", temperature)
        _check_positive("score_learning_rate", score_learning_rate)
        gamma, zeta = stretch
        if not gamma < 0 < 1 < zeta:
            raise ConfigError(
                f"stretch must be (gamma, zeta) with gamma < 0 < 1 < zeta, got {stretch!r}"
            )
        self.penalty_weight = penalty_weight
        self.temperature = temperature
        self.stretch = (gamma, zeta)
        self.initial_log_alpha = initial_log_alpha
        self.score_learning_rate = score_learning_rate
        self._log_alpha: dict[str, torch.Tensor] = {}

    def _create_state(self, name: str, layer: nn.Module) -> None:
        mask = layer.block_mask
        self._log_alpha[name] = torch.full(
            mask.shape, self.initial_log_alpha, device=mask.device, requires_grad=True
        )

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

    def gate(self, name: str, layer: nn.Module) -> torch.Tensor:
        """A stochastic gate while the layer trains, the deterministic mask otherwise.

        Args:
            name: layer name.
            layer: the block layer (its `training` flag picks the mode).

        Returns:
            A `(n/p, m/q)` gate in [0, 1].
        """
        log_alpha = self._log_alpha[name]
        if not layer.training:
            return (log_alpha.detach() > 0).to(log_alpha.dtype)
        return self.sample_gates(log_alpha)

    def scores(self) -> dict[str, torch.Tensor]:
        """The log-alphas (higher: the gate is more likely open).

        Returns:
            A copy of `log_alpha` per layer name.
        """
        return {name: value.detach().clone() for name, value in self._log_alpha.items()}

    def masks(self, density: float, scope: Scope = "local") -> dict[str, torch.Tensor]:
        """Deterministic gates `log_alpha > 0`; `density` and `scope` are ignored.

        Args:
            density: unused.
            scope: unused.

        Returns:
            Boolean masks per layer name.
        """
        return {name: value.detach() > 0 for name, value in self._log_alpha.items()}

    def penalty(self, scale: float = 1.0) -> torch.Tensor:
        """`scale * lambda * mean_b P(gate_b != 0)`, the expected-L0 norm per block.

        Args:
            scale: schedule factor in [0, 1].

        Returns:
            A scalar tensor with autograd to the log-alphas.
        """
        gamma, zeta = self.stretch
        values = torch.cat([value.flatten() for value in self._log_alpha.values()])
        shift = self.temperature * math.log(-gamma / zeta)
        return scale * self.penalty_weight * torch.sigmoid(values - shift).mean()

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
