"""A test-only adapter kind (a DoRA-like scaled low-rank channel adapter), registered here only.

It proves the adapter-kind seam: nothing under `spa/` knows it, yet `spa.adapt`, pruning,
compaction, fuse, accounting, density and bundles all handle it through the protocols::

    W_t = W_s * (m_row m_col^T) + diag(s * m_row) (W_down * m_row 1^T)(W_up * 1 m_col^T)

with a learned per-output-channel scale `s` (init 1). Learned parameters per layer:
`r (||m_row||_0 + ||m_col||_0) + ||m_row||_0`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

import spa
from spa.adapters import AdapterKind, register_kind
from spa.adapters.config import ModuleSelection, check_common
from tests.contract.cases import CASES, KindCase


@dataclass(frozen=True, kw_only=True)
class ScaledLowRankConfig:
    """Rank and init range of the scaled low-rank adapter, plus the common selection fields."""

    rank: int = 2
    init_range: float = 1e-4
    target_modules: ModuleSelection = None
    exclude_modules: ModuleSelection = None
    trainable: tuple[str, ...] = ("norm", "head")
    head_modules: ModuleSelection = None

    def __post_init__(self) -> None:
        check_common(self)


class ScaledLowRankLinear(nn.Module):
    """A frozen `nn.Linear` plus a channel-masked, per-row scaled low-rank adapter."""

    kind = "scaled_lowrank"

    def __init__(self, base: nn.Linear, rank: int, init_range: float = 1e-4) -> None:
        super().__init__()
        out_features, in_features = base.weight.shape
        self.base = base
        self.base_shape = tuple(base.weight.shape)
        self.register_buffer(spa.adapters.OUT_MASK, torch.ones(out_features, dtype=torch.bool))
        self.register_buffer(spa.adapters.IN_MASK, torch.ones(in_features, dtype=torch.bool))
        self.register_buffer("out_indices", torch.arange(out_features))
        self.register_buffer("in_indices", torch.arange(in_features))
        self.down = nn.Parameter(torch.empty(out_features, rank))
        self.up = nn.Parameter(torch.empty(rank, in_features))
        self.scale = nn.Parameter(torch.ones(out_features))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))
        nn.init.uniform_(self.up, -init_range, init_range)

    def fused_weight(self) -> torch.Tensor:
        """`W_t` of the equation in the module docstring."""
        rows, cols = self.out_mask, self.in_mask
        masked = self.base.weight * (rows[:, None] & cols[None, :])
        down = self.down * (self.scale * rows)[:, None]
        return masked + down @ (self.up * cols[None, :])

    def fused_bias(self) -> torch.Tensor | None:
        """The base bias with removed output channels zeroed."""
        return None if self.base.bias is None else self.base.bias * self.out_mask

    def retained_weights(self) -> int:
        """Kept rows x kept columns of the base weight."""
        return int(self.out_mask.sum()) * int(self.in_mask.sum())

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The factors and the scale."""
        return [self.down, self.up, self.scale]

    def learned_parameter_counts(self, counted: set[int]) -> dict[str, int]:
        """`r (rows + cols) + rows` while the adapter trains."""
        if not self.down.requires_grad:
            return {}
        rows, cols = int(self.out_mask.sum()), int(self.in_mask.sum())
        return {"adapter": self.down.shape[1] * (rows + cols) + rows}

    @torch.no_grad()
    def select_channels(
        self, out_positions: torch.Tensor | None = None, in_positions: torch.Tensor | None = None
    ) -> None:
        """Keep only the given rows / columns of base, factors, scale, masks and indices."""
        weight = self.base.weight
        rows = torch.arange(weight.shape[0]) if out_positions is None else out_positions
        cols = torch.arange(weight.shape[1]) if in_positions is None else in_positions
        bias = self.base.bias
        base = nn.Linear(len(cols), len(rows), bias=bias is not None)
        base.weight = nn.Parameter(weight[rows][:, cols], requires_grad=weight.requires_grad)
        if bias is not None:
            base.bias = nn.Parameter(bias[rows], requires_grad=bias.requires_grad)
        self.base = base
        self.out_mask, self.in_mask = self.out_mask[rows], self.in_mask[cols]
        self.out_indices, self.in_indices = self.out_indices[rows], self.in_indices[cols]
        self.down = nn.Parameter(self.down[rows], self.down.requires_grad)
        self.up = nn.Parameter(self.up[:, cols], self.up.requires_grad)
        self.scale = nn.Parameter(self.scale[rows], self.scale.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x W_t^T + b`."""
        return nn.functional.linear(x, self.fused_weight(), self.fused_bias())


SCALED_LOWRANK = register_kind(
    AdapterKind(
        name="scaled_lowrank",
        config_type=ScaledLowRankConfig,
        label="Scaled r{rank}",
        layer_types=(nn.Linear,),
        make_layer=lambda module, config, name, context: ScaledLowRankLinear(
            module, config.rank, config.init_range
        ),
        layer_options=lambda layer: {"rank": layer.down.shape[1]},
        from_bundle=lambda base, options, name: ScaledLowRankLinear(base, int(options["rank"])),
    )
)


def _reference(layer: ScaledLowRankLinear) -> torch.Tensor:
    rows, cols = layer.out_mask.float(), layer.in_mask.float()
    masked = layer.base.weight * torch.outer(rows, cols)
    return masked + torch.diag(layer.scale * rows) @ (layer.down * rows[:, None]) @ (
        layer.up * cols[None, :]
    )


def _dparams(layer: ScaledLowRankLinear) -> int:
    rows, cols = int(layer.out_mask.sum()), int(layer.in_mask.sum())
    return layer.down.shape[1] * (rows + cols) + rows


CASES["scaled_lowrank"] = KindCase(
    config=lambda: ScaledLowRankConfig(rank=2),
    layer_types=("linear",),
    reference_weight=_reference,
    dparams=_dparams,
)
