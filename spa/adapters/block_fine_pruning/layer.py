"""`BlockMaskedLinear`: block fine-pruning of an `nn.Linear` (the weight itself trains)."""

from __future__ import annotations

import math

import torch
from torch import nn

from spa.adapters import _conv
from spa.adapters.density import trained_base_counts
from spa.adapters.masks import expand_block_mask
from spa.adapters.protocols import BLOCK_MASK, GateHook
from spa.adapters.splopa.layer import check_block_shape
from spa.errors import UnsupportedLayerError


class BlockMaskedLinear(nn.Module):
    """Fine-pruning baseline for blocks: an `nn.Linear` trained directly under a block mask::

        W_t = W * (M_b kron J)

    Symbols map to attributes: `W` -> `base.weight` (n x m, trainable), `M_b` -> `block_mask`
    (n/p x m/q, bool). The bias is the base's, unmasked (as in `SPLoPALinear`), so block
    pruning, compaction and accounting treat SPLoPA and fine-pruning through one code path.
    Learned parameters: `p * q * ||M_b||_0` (plus the bias when it trains).

    Args:
        base: the `nn.Linear` to prune; its shape must be divisible by the block shape.
        block_shape: `(p, q)`.
        name: dotted layer path, used in error messages.

    Raises:
        UnsupportedLayerError: for a non-Linear base or a shape not divisible by the block shape.
    """

    def __init__(
        self, base: nn.Module, block_shape: tuple[int, int] = (32, 32), name: str = "layer"
    ) -> None:
        super().__init__()
        if type(base) is not nn.Linear:
            raise UnsupportedLayerError(
                f"{name}: block fine-pruning supports nn.Linear only, got {type(base).__name__}"
            )
        check_block_shape(base, block_shape, name)
        rows, cols = block_shape
        out_features, in_features = base.weight.shape
        self.base = base
        self.name = name
        self.block_shape = (rows, cols)
        grid = (out_features // rows, in_features // cols)
        self.register_buffer(
            BLOCK_MASK, torch.ones(grid, dtype=torch.bool, device=base.weight.device)
        )
        # No adapter: block criteria gate the base weight only.
        self.register_parameter("block_weights", None)
        # Training-time hook set by a block pruning criterion; see `SPLoPALinear.block_gate`.
        self.block_gate: GateHook | None = None

    kind = "block_fine_pruning"

    @property
    def base_shape(self) -> tuple[int, ...]:
        """Shape of the base weight."""
        return tuple(self.base.weight.shape)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The base weight itself (fine-pruning learns it directly)."""
        return [self.base.weight]

    def retained_weights(self) -> int:
        """`p q ||M_b||_0`: base weight entries the block mask keeps."""
        return int(self.block_mask.sum()) * math.prod(self.block_shape)

    def learned_parameter_counts(self, counted: set[int]) -> dict[str, int]:
        """`p q ||M_b||_0` retained weights when the weight trains, plus a trained bias."""
        return trained_base_counts(self)

    def fused_bias(self) -> torch.Tensor | None:
        """The base bias, unmasked (as in `SPLoPALinear`)."""
        return self.base.bias

    def unmasked_weight(self) -> torch.Tensor:
        """The trained weight itself, ignoring the mask; no autograd."""
        return self.base.weight.detach()

    def adapter_parameter_names(self) -> list[str]:
        """Fine-pruning has no adapter parameters; the base weight itself trains."""
        return []

    def masks(self) -> dict[str, torch.Tensor]:
        """The layer's pruning masks by name."""
        return {BLOCK_MASK: self.block_mask}

    def weight_mask(self) -> torch.Tensor:
        """`M_b kron J`, the element mask over `base.weight`."""
        return expand_block_mask(self.block_mask, self.block_shape)

    def masked_base_weight(self) -> torch.Tensor:
        """`W * (M_b kron J)`."""
        if bool(self.block_mask.all()):
            return self.base.weight
        return self.base.weight * self.weight_mask()

    def delta_weight(self) -> torch.Tensor:
        """Zero: fine-pruning learns the weight itself, not a delta."""
        return torch.zeros_like(self.base.weight)

    def fused_weight(self) -> torch.Tensor:
        """`W_t`, the masked weight."""
        return self.masked_base_weight()

    def __getattr__(self, name: str) -> object:
        # in_features / out_features come from `base` (issue 11).
        return _conv.base_attribute(self, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The masked linear map; a criterion's gate replaces the mask while training."""
        if self.block_gate is not None and torch.is_grad_enabled():
            weight, _ = self.block_gate(self)
        else:
            weight = self.masked_base_weight()
        return nn.functional.linear(x, weight, self.base.bias)

    def extra_repr(self) -> str:
        kept = int(self.block_mask.sum())
        return f"block_shape={self.block_shape}, blocks={kept}/{self.block_mask.numel()}"
