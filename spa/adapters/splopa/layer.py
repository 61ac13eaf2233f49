"""SPLoPA: structured-pruning low-rank prototype adapter for Linear layers (DESIGN §2, Eq. 6)."""

from __future__ import annotations

import math

import torch
from torch import nn

from spa.adapters import _conv
from spa.adapters._conv import check_supported
from spa.adapters.density import trained_base_counts
from spa.adapters.masks import DerivedTensorCache, expand_block_mask
from spa.adapters.protocols import BLOCK_MASK, GateHook
from spa.adapters.splopa.equation import block_delta, prototype_matrices
from spa.errors import ConfigError, UnsupportedLayerError


def check_block_shape(base: nn.Module, block_shape: tuple[int, int], name: str) -> None:
    """Raise unless `base.weight` divides into whole `(p, q)` blocks.

    Raises:
        UnsupportedLayerError: naming the layer, its weight shape and the block shape.
    """
    rows, cols = block_shape
    out_features, in_features = base.weight.shape
    if out_features % rows or in_features % cols:
        raise UnsupportedLayerError(
            f"{name}: weight shape ({out_features}, {in_features}) is not divisible by "
            f"block_shape=({rows}, {cols}); choose a block shape dividing both or exclude it "
            "via `exclude_modules=`"
        )


class PrototypeBank(nn.Module):
    """`R` rank-`r` block prototypes `P_i = p_i q_i^T`, owned by one layer or shared by several.

    `adapt` creates one bank per block shape when prototypes are shared and passes it to each
    layer, so sharing is explicit: the same tensors appear under every sharing layer in
    `state_dict`, and `named_parameters()` lists them once.

    Args:
        block_shape: `(p, q)`, rows and columns of one block.
        num_prototypes: `R`.
        prototype_rank: `r`.

    Attributes:
        row_factors: `p_i` stacked, shape `(R, p, r)`.
        col_factors: `q_i` stacked, shape `(R, q, r)`.
    """

    def __init__(
        self,
        block_shape: tuple[int, int],
        num_prototypes: int,
        prototype_rank: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        rows, cols = block_shape
        self.block_shape = (rows, cols)
        self.num_prototypes = num_prototypes
        self.prototype_rank = prototype_rank
        factory = {"device": device, "dtype": dtype}
        self.row_factors = nn.Parameter(
            torch.empty(num_prototypes, rows, prototype_rank, **factory)
        )
        self.col_factors = nn.Parameter(
            torch.empty(num_prototypes, cols, prototype_rank, **factory)
        )
        # Unit-scale prototypes; the block weights (near zero) set the adapter's initial size.
        nn.init.uniform_(
            self.row_factors, -math.sqrt(3 / prototype_rank), math.sqrt(3 / prototype_rank)
        )
        nn.init.uniform_(self.col_factors, -math.sqrt(3), math.sqrt(3))

    def prototypes(self) -> torch.Tensor:
        """The dense prototypes `P_i`, shape `(R, p, q)`."""
        return prototype_matrices(self.row_factors, self.col_factors)

    def extra_repr(self) -> str:
        return (
            f"block_shape={self.block_shape}, num_prototypes={self.num_prototypes}, "
            f"prototype_rank={self.prototype_rank}"
        )


class SPLoPALinear(nn.Module):
    """A frozen `nn.Linear` plus a block-masked low-rank prototype adapter (Eq. 6)::

        W_t = W_s * (M_b kron J) + sum_i (M_b * B_i) kron (p_i q_i^T)

    Symbols map to attributes: `W_s` -> `base.weight` (n x m), `M_b` -> `block_mask`
    (n/p x m/q, bool), `B_i` -> `block_weights[i]` (shape `(R, n/p, m/q)`), `p_i` / `q_i` ->
    `prototypes.row_factors[i]` / `prototypes.col_factors[i]`. The bias is the base's, unmasked.

    Args:
        base: the `nn.Linear` to adapt; its shape must be divisible by the block shape.
        block_shape: `(p, q)`.
        num_prototypes: `R`.
        prototype_rank: `r`.
        init_range: block weights are drawn from U(-init_range, init_range).
        bank: a shared `PrototypeBank` with the same block shape; a private one if None.
        name: dotted layer path, used in error messages.

    Raises:
        UnsupportedLayerError: for a non-Linear base or a shape not divisible by the block shape.
        ConfigError: for a bank whose configuration differs from the arguments.
    """

    def __init__(
        self,
        base: nn.Module,
        block_shape: tuple[int, int] = (32, 32),
        num_prototypes: int = 64,
        prototype_rank: int = 1,
        init_range: float = 1e-4,
        bank: PrototypeBank | None = None,
        name: str = "layer",
    ) -> None:
        super().__init__()
        check_supported(base, name)
        if not isinstance(base, nn.Linear):
            raise UnsupportedLayerError(
                f"{name}: SPLoPA supports nn.Linear only, got {type(base).__name__}; "
                "use SPLoRA for convolutions"
            )
        check_block_shape(base, block_shape, name)
        rows, cols = block_shape
        out_features, in_features = base.weight.shape
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        if bank is None:
            bank = PrototypeBank((rows, cols), num_prototypes, prototype_rank, **factory)
        elif (bank.block_shape, bank.num_prototypes, bank.prototype_rank) != (
            (rows, cols),
            num_prototypes,
            prototype_rank,
        ):
            raise ConfigError(
                f"{name}: shared PrototypeBank has block_shape={bank.block_shape}, "
                f"num_prototypes={bank.num_prototypes}, prototype_rank={bank.prototype_rank}; "
                f"the layer asked for {(rows, cols)}, {num_prototypes}, {prototype_rank}"
            )
        self.base = base
        self.name = name
        self.block_shape = (rows, cols)
        self.prototypes = bank
        grid = (out_features // rows, in_features // cols)
        self.register_buffer(
            BLOCK_MASK, torch.ones(grid, dtype=torch.bool, device=factory["device"])
        )
        self.block_weights = nn.Parameter(torch.empty(num_prototypes, *grid, **factory))
        nn.init.uniform_(self.block_weights, -init_range, init_range)
        # Memory versus speed: keep at most one derived full-size weight (the fused `W_t` for
        # inference or the masked base for training, whichever was used last); with False none
        # is kept and each forward forms what it needs (see `spa.cache_fused_weights`).
        self.cache_fused_weight = True
        self._weight_cache = DerivedTensorCache()
        # Training-time hook set by a block pruning criterion (spa.pruning.block_criteria): it
        # returns the gated `(base weight, block weights)` that replace the masked ones in the
        # training forward. A plain attribute, so it never enters `state_dict` or a bundle.
        self.block_gate: GateHook | None = None

    # -- AdapterLayer / BlockMasked protocol -----------------------------------------------------
    kind = "splopa"

    @property
    def base_shape(self) -> tuple[int, ...]:
        """Shape of the base weight (block layers are never channel-compacted)."""
        return tuple(self.base.weight.shape)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The block weights and the prototype factors (shared ones included)."""
        return [self.block_weights, *self.prototypes.parameters()]

    def retained_weights(self) -> int:
        """`p q ||M_b||_0`: base weight entries the block mask keeps."""
        return int(self.block_mask.sum()) * math.prod(self.block_shape)

    def learned_parameter_counts(self, counted: set[int]) -> dict[str, int]:
        """`R ||M_b||_0` block weights, the bank's factors once per sharing group (DESIGN §2)."""
        counts: dict[str, int] = {}
        adapter = 0
        if self.block_weights.requires_grad:
            adapter += self.block_weights.shape[0] * int(self.block_mask.sum())
        bank = self.prototypes
        if id(bank) not in counted and bank.row_factors.requires_grad:
            counted.add(id(bank))
            adapter += bank.row_factors.numel() + bank.col_factors.numel()
        if adapter:
            counts["adapter"] = adapter
        return {**counts, **trained_base_counts(self)}

    def fused_bias(self) -> torch.Tensor | None:
        """The base bias, unmasked (Eq. 6 masks weights only)."""
        return self.base.bias

    def unmasked_weight(self) -> torch.Tensor:
        """`W_s + sum_i B_i kron P_i` over every block, masked or not; no autograd."""
        with torch.no_grad():
            delta = block_delta(self.block_weights, self.prototypes.prototypes())
            return self.base.weight.detach() + delta

    def adapter_parameter_names(self) -> list[str]:
        """Names of the layer's own adapter parameters (shared prototypes live in the bank)."""
        return ["block_weights"]

    def masks(self) -> dict[str, torch.Tensor]:
        """The layer's pruning masks by name."""
        return {BLOCK_MASK: self.block_mask}

    def weight_mask(self) -> torch.Tensor:
        """`M_b kron J`, the element mask over `base.weight`."""
        return expand_block_mask(self.block_mask, self.block_shape)

    def masked_base_weight(self) -> torch.Tensor:
        """`W_s * (M_b kron J)`; without autograd on the base, kept in the layer's one weight
        cache while `cache_fused_weight` is set."""
        weight = self.base.weight
        if weight.requires_grad and torch.is_grad_enabled():
            return weight * self.weight_mask()
        if not self.cache_fused_weight or bool(self.block_mask.all()):
            return self._masked_base()
        return self._weight_cache.get((weight, self.block_mask), self._masked_base)

    def _masked_base(self) -> torch.Tensor:
        weight = self.base.weight.detach()
        return weight if bool(self.block_mask.all()) else weight * self.weight_mask()

    def masked_block_weights(self) -> torch.Tensor:
        """`M_b * B_i` for every prototype, shape `(R, n/p, m/q)`."""
        return self.block_weights * self.block_mask

    def delta_weight(self) -> torch.Tensor:
        """The adapter term of Eq. 6 as a dense `(n, m)` matrix."""
        return block_delta(self.masked_block_weights(), self.prototypes.prototypes())

    def set_weight_cache(self, enabled: bool) -> None:
        """Keep one fused weight for inference (`enabled`) or none; dropping a kept one now."""
        self.cache_fused_weight = enabled
        if not enabled:
            self._weight_cache.clear()

    def fused_weight(self) -> torch.Tensor:
        """`W_t` of Eq. 6; without autograd kept in the layer's one weight cache while
        `cache_fused_weight` is set.

        The cache also keys on the process's optimizer steps while a source trains (see
        `DerivedTensorCache`).
        """
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            return self.masked_base_weight() + self.delta_weight()
        if not self.cache_fused_weight:
            with torch.no_grad():
                return self._fused()
        sources = (
            self.base.weight,
            self.block_mask,
            self.block_weights,
            self.prototypes.row_factors,
            self.prototypes.col_factors,
        )
        return self._weight_cache.get(sources, self._fused)

    def _fused(self) -> torch.Tensor:
        weight = self._masked_base()
        delta = self.delta_weight()
        return delta.add_(weight)  # the delta is a new tensor: no third full-size one

    def adapter_forward(
        self, x: torch.Tensor, block_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The adapter term applied to `x` in factored form, never forming an n x m matrix.

        Input blocks are projected with the q-factors, mixed across blocks with the masked block
        weights, and expanded with the p-factors.

        Args:
            x: input of shape `(..., m)`.
            block_weights: `(R, n/p, m/q)` weights to mix with; `masked_block_weights()` if None.

        Returns:
            The adapter output, shape `(..., n)`.
        """
        if block_weights is None:
            block_weights = self.masked_block_weights()
        rows, cols = self.block_shape
        grid_rows, grid_cols = self.block_mask.shape
        bank = self.prototypes
        num, rank = bank.num_prototypes, bank.prototype_rank
        lead = x.shape[:-1]
        tokens = x.reshape(-1, cols)  # (N*m/q, q): one row per input block of a token
        count = tokens.shape[0] // grid_cols
        # Layouts are chosen so that every product is one GEMM on contiguous or transposed
        # operands: no permute copies, and batched products never fall back to per-batch loops.
        col_factors = bank.col_factors.permute(0, 2, 1).reshape(num * rank, cols)  # (R*r, q)
        projected = (col_factors @ tokens.t()).view(num, rank * count, grid_cols)  # (R, r*N, m/q)
        mixed = torch.bmm(projected, block_weights.transpose(1, 2))  # (R, r*N, n/p)
        row_factors = bank.row_factors.permute(0, 2, 1).reshape(num * rank, rows)  # (R*r, p)
        out = mixed.view(num * rank, count * grid_rows).t() @ row_factors  # (N*n/p, p)
        return out.view(*lead, grid_rows * rows)

    def __getattr__(self, name: str) -> object:
        # in_features / out_features come from `base` (issue 11).
        return _conv.base_attribute(self, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 6 applied to `x`: frozen base path plus factored adapter path when training."""
        bias = self.base.bias
        if not (torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())):
            return nn.functional.linear(x, self.fused_weight(), bias)
        if self.block_gate is not None:
            base_weight, block_weights = self.block_gate(self)
            return nn.functional.linear(x, base_weight, bias) + self.adapter_forward(
                x, block_weights
            )
        return nn.functional.linear(x, self.masked_base_weight(), bias) + self.adapter_forward(x)

    def extra_repr(self) -> str:
        kept = int(self.block_mask.sum())
        return f"block_shape={self.block_shape}, blocks={kept}/{self.block_mask.numel()}"
