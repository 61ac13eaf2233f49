"""Block masks: scores -> masks (local or global), straight-through gating, the criterion base.

A block layer (any `BlockMasked` adapter: `SPLoPALinear`, `BlockMaskedLinear`, ...) holds a boolean
`block_mask` of shape `(n/p, m/q)`. While a criterion prunes, it gates the training forward with a
float tensor of the same shape through `gated_weights`: the forward multiplies each block by its
gate, and the backward passes the full gradient to the weights (pruned blocks keep receiving updates
and can come back, as automated gradual pruning requires) and `<W_block, dL/dW'_block>` to the gate
(the straight-through estimate used by movement pruning).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn

from spa.adapters.density import layers_density
from spa.adapters.masks import expand_block_mask
from spa.errors import ConfigError

Scope = Literal["local", "global"]


class _GateThrough(torch.autograd.Function):
    """`weight * gate` whose backward passes the gradient to `weight` unmasked."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight, gate)
        return weight * gate

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        weight, gate = ctx.saved_tensors
        grad_weight = grad if ctx.needs_input_grad[0] else None
        grad_gate = None
        if ctx.needs_input_grad[1]:
            grad_gate = (grad * weight).sum_to_size(gate.shape)
        return grad_weight, grad_gate


def block_sums(values: torch.Tensor, block_shape: tuple[int, int]) -> torch.Tensor:
    """Sum an `(n, m)` tensor over each `p x q` block.

    Args:
        values: e.g. squared weights.
        block_shape: `(p, q)`.

    Returns:
        The `(n/p, m/q)` block sums.
    """
    rows, cols = block_shape
    out_features, in_features = values.shape
    blocks = values.reshape(out_features // rows, rows, in_features // cols, cols)
    return blocks.sum(dim=(1, 3))


def gated_weights(
    layer: nn.Module, gate: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer's weights gated block-wise for the training forward (straight-through).

    Args:
        layer: a block-masked adapter layer.
        gate: `(n/p, m/q)` float gates (values in [0, 1], possibly with autograd to scores);
            None gates with the layer's current `block_mask`.

    Returns:
        `(base weight (n, m), block weights (R, n/p, m/q) or None for fine-pruning)`.
    """
    weight = layer.base.weight
    rows, cols = layer.block_shape
    grid_rows, grid_cols = layer.block_mask.shape
    if gate is None:
        gate = layer.block_mask.to(weight.dtype)
    if weight.requires_grad or gate.requires_grad:
        blocks = weight.reshape(grid_rows, rows, grid_cols, cols)
        base = _GateThrough.apply(blocks, gate[:, None, :, None]).reshape(weight.shape)
    elif torch.equal(gate, layer.block_mask.to(gate.dtype)):
        base = layer.masked_base_weight()  # frozen base, hard mask: the cached product
    else:
        base = weight * expand_block_mask(gate, (rows, cols))
    if layer.block_weights is None:
        return base, None
    return base, _GateThrough.apply(layer.block_weights, gate)


def adapted_weight(layer: nn.Module) -> torch.Tensor:
    """The layer's adapted weight ignoring its mask: what block scores are computed on.

    For SPLoPA this is `W_s + sum_i B_i kron P_i` (every block, masked or not); for
    fine-pruning it is the trained weight itself.

    Args:
        layer: a block-masked adapter layer.

    Returns:
        The `(n, m)` weight, without autograd.
    """
    return layer.unmasked_weight()


def _kept(density: float, total: int) -> int:
    if not 0.0 <= density <= 1.0:
        raise ConfigError(f"density must be in [0, 1], got {density!r}")
    return math.floor(density * total + 0.5)


def _top_mask(scores: torch.Tensor, kept: int) -> torch.Tensor:
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if kept > 0:
        mask[torch.topk(scores.flatten(), kept).indices] = True
    return mask.reshape(scores.shape)


def compute_block_masks(
    scores: Mapping[str, torch.Tensor], density: float, scope: Scope = "local"
) -> dict[str, torch.Tensor]:
    """Keep the highest-scoring blocks: `round(density * blocks)` of them.

    Args:
        scores: block scores `(n/p, m/q)` per layer name (higher = more important).
        density: fraction of blocks kept, in [0, 1].
        scope: "local" keeps the same fraction in every layer; "global" ranks all blocks
            together after dividing each layer's scores by their root mean square, so layers
            with larger weights do not win by scale alone.

    Returns:
        Boolean masks per layer name.

    Raises:
        ConfigError: for a density outside [0, 1] or an unknown scope.
    """
    if scope == "local":
        return {
            name: _top_mask(score, _kept(density, score.numel())) for name, score in scores.items()
        }
    if scope != "global":
        raise ConfigError(f"scope must be 'local' or 'global', got {scope!r}")
    names = list(scores)
    normalised = [scores[n] / scores[n].pow(2).mean().sqrt().clamp_min(1e-12) for n in names]
    flat = torch.cat([score.flatten() for score in normalised])
    mask = _top_mask(flat, _kept(density, flat.numel()))
    masks, start = {}, 0
    for name, score in zip(names, normalised):
        masks[name] = mask[start : start + score.numel()].reshape(score.shape)
        start += score.numel()
    return masks


def apply_block_masks(layers: Mapping[str, nn.Module], masks: Mapping[str, torch.Tensor]) -> None:
    """Copy `masks` into the layers' `block_mask` buffers, in place.

    Args:
        layers: block layers by name.
        masks: boolean masks by the same names.

    Raises:
        ConfigError: for a mask naming an unknown layer or of the wrong shape.
    """
    for name, mask in masks.items():
        if name not in layers:
            raise ConfigError(f"mask for unknown block layer {name!r}; known: {sorted(layers)}")
        buffer = layers[name].block_mask
        if mask.shape != buffer.shape:
            raise ConfigError(
                f"{name}: block mask shape {tuple(mask.shape)} differs from the layer's block "
                f"grid {tuple(buffer.shape)}"
            )
        if not torch.equal(buffer, mask.to(buffer.device)):
            buffer.copy_(mask)


def block_density(layers: Mapping[str, nn.Module]) -> float:
    """`spa.density` over the given block layers: kept base weights / base weights.

    Args:
        layers: block layers by name.

    Returns:
        The density (1.0 for no layers).
    """
    return layers_density(layers.values())


def _gate_hook(criterion: BlockCriterion, name: str, layer: nn.Module):
    return gated_weights(layer, criterion.gate(name, layer))


class BlockCriterion:
    """Shared behaviour: attach/detach gates, top-k masks, no penalty, no learned state.

    Attributes:
        is_thresholded: True when masks come from a threshold and density is an outcome.
        layers: the attached block layers by name.
    """

    is_thresholded = False

    def __init__(self) -> None:
        self.layers: dict[str, nn.Module] = {}

    def attach(self, layers: Mapping[str, nn.Module]) -> None:
        """Create the per-layer state and install the gating hook on each layer.

        Args:
            layers: block layers by name (e.g. from `block_prunable_layers`).

        Raises:
            ConfigError: if `layers` is empty or a layer is already gated by another criterion.
        """
        if not layers:
            raise ConfigError(f"{type(self).__name__}: no block layers to attach to")
        for name, layer in layers.items():
            if layer.block_gate is not None:
                raise ConfigError(
                    f"{name}: already gated by another criterion; call its detach() first"
                )
        self.layers = dict(layers)
        for name, layer in self.layers.items():
            self._create_state(name, layer)
            layer.block_gate = functools.partial(_gate_hook, self, name)

    def detach(self) -> None:
        """Remove the gating hooks; the layers keep their current `block_mask`."""
        for layer in self.layers.values():
            layer.block_gate = None

    def _create_state(self, name: str, layer: nn.Module) -> None:
        """Create training-time state for one layer (none by default)."""

    def gate(self, name: str, layer: nn.Module) -> torch.Tensor | None:
        """The float gate for the training forward; None means the current `block_mask`.

        Args:
            name: layer name.
            layer: the block layer.

        Returns:
            A `(n/p, m/q)` tensor or None.
        """
        return None

    def scores(self) -> dict[str, torch.Tensor]:
        """Block importance per layer; higher is more important.

        Returns:
            A `(n/p, m/q)` tensor per layer name.

        Raises:
            NotImplementedError: in the shared base class, which has no scores.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define scores()")

    def masks(self, density: float, scope: Scope = "local") -> dict[str, torch.Tensor]:
        """Boolean block masks at `density` (ignored by thresholded criteria).

        Args:
            density: fraction of blocks kept.
            scope: "local" (per matrix) or "global" ranking.

        Returns:
            Masks per layer name.
        """
        return compute_block_masks(self.scores(), density, scope)

    def penalty(self, scale: float = 1.0) -> torch.Tensor:
        """The regularisation term to add to the loss, times `scale` (zero by default).

        Args:
            scale: schedule factor in [0, 1] applied to the penalty weight.

        Returns:
            A scalar tensor.
        """
        return torch.zeros(())

    def update_scores(self) -> None:
        """Apply the accumulated gradients to the learned state (none by default)."""

    def state_tensors(self) -> list[torch.Tensor]:
        """The learned training-time tensors (for inspection or a custom optimizer).

        Returns:
            The tensors updated by `update_scores` (empty for magnitude).
        """
        return []
