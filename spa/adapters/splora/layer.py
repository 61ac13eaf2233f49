"""SPLoRA: structured-pruning low-rank adapter for Linear and Conv1d/2d/3d (DESIGN §2, Eq. 4)."""

from __future__ import annotations

import math

import torch
from torch import nn

from spa.adapters import _conv
from spa.adapters.density import trained_base_counts
from spa.adapters.masks import DerivedTensorCache, ones_mask, outer_mask
from spa.adapters.protocols import IN_MASK, OUT_MASK
from spa.adapters.splora._autograd import (
    FusedLowRank,
    fused_without_grad,
    supports_fused_training,
)
from spa.adapters.splora.equation import add_low_rank, masked_factors
from spa.errors import ConfigError


class SPLoRALayer(nn.Module):
    """A frozen Linear/ConvNd plus a channel-masked low-rank adapter.

    Implements Eq. 4 of the paper on the layer's weight matrix `W_s` (`out x in/groups`, with the
    kernel's spatial taps as extra trailing dimensions for convolutions)::

        W_t = W_s * (m_row m_col^T) + (W_down * m_row 1^T)(W_up * 1 m_col^T)

    Symbols map to attributes: `W_s` -> `base.weight`, `m_row` -> `out_mask`, `m_col` ->
    `in_mask`, `W_down` -> `down` (out x rank), `W_up` -> `up` (rank x in/groups). For
    convolutions the adapter product is added at the kernel's centre tap (a parallel point-wise
    path), so it fuses into the kernel. `out_indices` / `in_indices` record which channels of the
    original base layer this layer still holds after compaction, so a task can be rebuilt from the
    shared base weights. Output channels removed by `out_mask` are exactly zero (bias included).

    With `rank=0` the layer holds no adapter: it is the fine-pruning form, where `base.weight`
    itself is the learned parameter and only the masks apply.

    Memory versus speed (`cache_fused_weight`, default True): without autograd the layer keeps
    one fused `W_t` (the base weight's size), so repeated inference costs one plain op; while
    training `W_t` is formed for the op and again in backward, never kept. With False the layer
    never forms a full-size weight: it runs the base layer on the masked input and the adapter
    as two rank-r products (slower; for models near the memory limit). Set it on a whole model
    with `spa.cache_fused_weights`.

    Args:
        base: the layer to adapt (`nn.Linear` or `nn.Conv1d/2d/3d`, any groups/stride/dilation/
            padding mode; odd kernel sizes only).
        rank: adapter rank `r`; 0 for no adapter.
        init_range: `up` is drawn from U(-init_range, init_range); `down` is Kaiming-uniform.
        name: dotted layer path, used in error messages.

    Raises:
        UnsupportedLayerError: for other layer types or even kernel sizes.
        ConfigError: for a negative rank or non-positive init range.
    """

    def __init__(
        self, base: nn.Module, rank: int, init_range: float = 1e-4, name: str = "layer"
    ) -> None:
        super().__init__()
        _conv.check_supported(base, name)
        if _conv.spatial_dims(base) > 0:
            _conv.centre_tap(base, name)  # validates the kernel early
        if rank < 0:
            raise ConfigError(f"{name}: rank must be >= 0, got {rank}")
        if not init_range > 0:
            raise ConfigError(f"{name}: init_range must be > 0, got {init_range}")
        self.base = base
        self.rank = rank
        self.name = name
        # Shape of the original base weight; compaction keeps it, so density is measured
        # against the base (issue 3).
        self.base_shape = tuple(base.weight.shape)
        out_channels, in_columns = base.weight.shape[:2]
        device = base.weight.device
        self.register_buffer(OUT_MASK, ones_mask(out_channels, device))
        self.register_buffer(IN_MASK, ones_mask(in_columns, device))
        self.register_buffer("out_indices", torch.arange(out_channels, device=device))
        self.register_buffer("in_indices", torch.arange(in_columns, device=device))
        if rank > 0:
            factory = {"device": device, "dtype": base.weight.dtype}
            self.down = nn.Parameter(torch.empty(out_channels, rank, **factory))
            self.up = nn.Parameter(torch.empty(rank, in_columns, **factory))
            nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))
            nn.init.uniform_(self.up, -init_range, init_range)
        else:
            self.register_parameter("down", None)
            self.register_parameter("up", None)
        self.cache_fused_weight = True
        self._fused_cache = DerivedTensorCache()

    # -- the wrapped layer's face ----------------------------------------------------------------
    def __getattr__(self, name: str) -> object:
        # stride, padding, kernel_size, in/out channels, ... come from `base` (issue 11).
        return _conv.base_attribute(self, name)

    @property
    def weight(self) -> torch.Tensor:
        """`W_t` of Eq. 4 (the base weight's shape), read-only: what code reading `.weight` sees."""
        return self.fused_weight()

    # -- AdapterLayer / ChannelMasked protocol --------------------------------------------------
    @property
    def kind(self) -> str:
        """Registered adapter kind: "splora", or "fine_pruning" for the rank-0 form."""
        return "splora" if self.rank > 0 else "fine_pruning"

    def adapter_parameter_names(self) -> list[str]:
        """Names of this layer's own learned adapter parameters (empty for rank 0)."""
        return ["down", "up"] if self.rank > 0 else []

    def masks(self) -> dict[str, torch.Tensor]:
        """The layer's pruning masks by name."""
        return {OUT_MASK: self.out_mask, IN_MASK: self.in_mask}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The factors `down`, `up`; for rank 0 (fine-pruning) the base weight itself."""
        return [self.down, self.up] if self.rank > 0 else [self.base.weight]

    def retained_weights(self) -> int:
        """`||m_row||_0 * ||m_col||_0 * k`: base weight entries the masks keep."""
        kernel = math.prod(self.base.weight.shape[2:])
        return int(self.out_mask.sum()) * int(self.in_mask.sum()) * kernel

    def learned_parameter_counts(self, counted: set[int]) -> dict[str, int]:
        """`r (||m_row||_0 + ||m_col||_0)` adapter values, retained weights if the base trains."""
        rows, cols = int(self.out_mask.sum()), int(self.in_mask.sum())
        counts: dict[str, int] = {}
        if self.rank > 0 and self.down.requires_grad:
            counts["adapter"] = self.rank * (rows + cols)
        return {**counts, **trained_base_counts(self, bias_entries=rows)}

    def fused_bias(self) -> torch.Tensor | None:
        """The masked bias (see `masked_bias`)."""
        return self.masked_bias()

    def weight_mask(self) -> torch.Tensor:
        """`m_row m_col^T` broadcastable over `base.weight`."""
        return outer_mask(self.out_mask, self.in_mask, self.base.weight.dim())

    def masked_base_weight(self) -> torch.Tensor:
        """`W_s * (m_row m_col^T)`; the base weight itself (no copy) when nothing is masked."""
        weight = self.base.weight
        if not (weight.requires_grad and torch.is_grad_enabled()):
            weight = weight.detach()
        if bool(self.out_mask.all()) and bool(self.in_mask.all()):
            return weight
        return weight * self.weight_mask()

    def masked_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`(W_down * m_row 1^T, W_up * 1 m_col^T)`."""
        return masked_factors(self.down, self.up, self.out_mask, self.in_mask)

    def centre_tap(self) -> tuple | None:
        """Index of the kernel's centre tap for conv layers, None for Linear."""
        return _conv.centre_tap(self.base, self.name) if self.base.weight.dim() > 2 else None

    def delta_weight(self) -> torch.Tensor:
        """The adapter term of Eq. 4 as a full weight tensor (zero outside the centre tap)."""
        zeros = torch.zeros_like(self.base.weight)
        if self.rank == 0:
            return zeros
        return add_low_rank(zeros, *self.masked_factors(), self.centre_tap())

    def set_weight_cache(self, enabled: bool) -> None:
        """Keep one fused weight for inference (`enabled`) or none; dropping a kept one now."""
        self.cache_fused_weight = enabled
        if not enabled:
            self._fused_cache.clear()

    def fused_weight(self) -> torch.Tensor:
        """`W_t` of Eq. 4; without autograd cached while `cache_fused_weight` is set.

        The cache also keys on the process's optimizer steps while a source trains (see
        `DerivedTensorCache`).
        """
        if torch.is_grad_enabled() and self._has_trainable():
            return self._compute_fused()
        if not self.cache_fused_weight:
            with torch.no_grad():
                return self._compute_fused()
        sources = (self.base.weight, self.out_mask, self.in_mask)
        if self.rank > 0:
            sources += (self.down, self.up)
        return self._fused_cache.get(sources, self._compute_fused)

    def _compute_fused(self) -> torch.Tensor:
        if self.rank == 0:
            return self.masked_base_weight()
        if torch.is_grad_enabled():
            weight = self.masked_base_weight()
            return add_low_rank(weight, *self.masked_factors(), self.centre_tap())
        return fused_without_grad(self, *self.masked_factors())

    def masked_bias(self) -> torch.Tensor | None:
        """The base bias with removed output channels zeroed (None if the layer has no bias)."""
        bias = self.base.bias
        return None if bias is None else bias * self.out_mask

    def _has_trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 4 applied to `x`.

        Without gradients, one op runs with the cached fused weight (`cache_fused_weight`). With
        a frozen base and a trainable adapter, one op runs with the fused weight and a custom
        backward forms neither the base weight's gradient nor any full-size adapter matrix (see
        `_autograd`). Otherwise (no weight cache, trainable base, grouped or non-zero-padded
        convs) the masked base path and the point-wise low-rank path run separately.
        """
        bias = self.masked_bias()
        training = torch.is_grad_enabled() and self._has_trainable()
        if self.cache_fused_weight and not training:
            return _conv.layer_forward(self.base, x, self.fused_weight(), bias)
        base_frozen = not self.base.weight.requires_grad and (
            bias is None or not bias.requires_grad
        )
        fusable = self.cache_fused_weight and supports_fused_training(self.base)
        if training and self.rank > 0 and base_frozen and fusable:
            return FusedLowRank.apply(x, self.down, self.up, self)
        out = self._masked_base_forward(x)
        if self.rank == 0:
            return out
        down, up = self.masked_factors()
        if _conv.spatial_dims(self.base) > 0:
            x = _conv.centre_samples(self.base, x)  # (batch, in, *out_spatial)
            groups = self.base.groups
            hidden = _conv.pointwise(self.base, x, up.repeat(groups, 1))  # (batch, g*r, ...)
            return out + _conv.pointwise(self.base, hidden, down)
        return out + nn.functional.linear(nn.functional.linear(x, up), down)

    def _masked_base_forward(self, x: torch.Tensor) -> torch.Tensor:
        """`base(x)` with `W_s * (m_row m_col^T)` and the masked bias, no full-size copy unless
        the base weight trains (its gradient must be masked)."""
        weight = self.base.weight
        if weight.requires_grad and torch.is_grad_enabled():
            return _conv.layer_forward(self.base, x, self.masked_base_weight(), self.masked_bias())
        trailing = (1,) * _conv.spatial_dims(self.base)  # channels lead the spatial axes
        if not bool(self.in_mask.all()):
            in_mask = self.in_mask.repeat(getattr(self.base, "groups", 1))  # (in,)
            x = x * in_mask.reshape(in_mask.shape + trailing)
        out = _conv.layer_forward(self.base, x, weight.detach(), self.base.bias)
        if bool(self.out_mask.all()):
            return out
        return out * self.out_mask.reshape(self.out_mask.shape + trailing)

    # -- compaction ------------------------------------------------------------------------------
    @torch.no_grad()
    def select_channels(
        self, out_positions: torch.Tensor | None = None, in_positions: torch.Tensor | None = None
    ) -> None:
        """Physically keep only the given output rows / input columns (positions in this layer).

        Slices the base weight and bias, the adapter factors, masks and base-channel indices
        together, so Eq. 4 on the kept channels is unchanged. Replaces `base` by a smaller layer of
        the same type; the original base module is not modified.
        """
        weight = self.base.weight
        # Positions live with the masks (a weight may be a `meta` placeholder, compacted_for_save)
        mask = self.out_mask
        out_positions = _all(weight.shape[0], mask) if out_positions is None else out_positions
        in_positions = _all(weight.shape[1], mask) if in_positions is None else in_positions
        new_weight = weight[out_positions][:, in_positions]
        bias = self.base.bias
        new_bias = None if bias is None else bias[out_positions]
        requires_grad = weight.requires_grad
        self.base = _conv.rebuild_layer(self.base, new_weight, new_bias)
        self.base.weight.requires_grad_(requires_grad)
        if bias is not None:
            self.base.bias.requires_grad_(bias.requires_grad)
        self.out_mask = self.out_mask[out_positions]
        self.in_mask = self.in_mask[in_positions]
        self.out_indices = self.out_indices[out_positions]
        self.in_indices = self.in_indices[in_positions]
        if self.rank > 0:
            self.down = nn.Parameter(self.down[out_positions], self.down.requires_grad)
            self.up = nn.Parameter(self.up[:, in_positions], self.up.requires_grad)
        self._fused_cache.clear()

    def extra_repr(self) -> str:
        return f"rank={self.rank}, out={int(self.out_mask.sum())}/{self.out_mask.numel()}, " + (
            f"in={int(self.in_mask.sum())}/{self.in_mask.numel()}"
        )


def _all(size: int, like: torch.Tensor) -> torch.Tensor:
    return torch.arange(size, device=like.device)
