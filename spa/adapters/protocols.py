"""The small protocols generic spa code uses to talk to adapter layers of any kind.

Pruning, accounting, fusing, density and bundles never check for a concrete adapter class: they
ask whether a layer is an `AdapterLayer` (fused weight + masked bias, learned-parameter count),
`ChannelMasked` (row/column masks over its base weight) or `BlockMasked` (a block mask). A new
adapter kind satisfies one of them and inherits every generic code path.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

import torch
from torch import nn

# Mask buffer names of adapter layers (DESIGN §2 symbols: m_row, m_col, M_b); masks computed by
# `spa.pruning` are keyed by these names.
OUT_MASK = "out_mask"
IN_MASK = "in_mask"
BLOCK_MASK = "block_mask"


class _ModuleProtocolMeta(type(Protocol)):
    """`isinstance` against a protocol by `hasattr`, as Python 3.11 does it.

    From Python 3.12, runtime protocol checks look members up with `inspect.getattr_static`,
    which does not see what an `nn.Module` keeps behind `__getattr__` (parameters, buffers and
    submodules such as `base` or `out_mask`), so every adapter layer would fail the check.
    """

    def __instancecheck__(cls, instance: object) -> bool:
        if not cls.__dict__.get("_is_protocol", False):  # a concrete class deriving from one
            return super().__instancecheck__(instance)
        members = getattr(cls, "__protocol_attrs__", None)
        if members is None:  # Python 3.10 and 3.11
            members = typing._get_protocol_attrs(cls)  # type: ignore[attr-defined]
        return all(hasattr(instance, name) for name in members)


# (layer) -> (gated base weight (n, m), gated block weights (R, n/p, m/q) or None).
GateHook = Callable[[nn.Module], tuple[torch.Tensor, torch.Tensor | None]]


@runtime_checkable
class AdapterLayer(Protocol, metaclass=_ModuleProtocolMeta):
    """An `nn.Module` holding a frozen `base` layer and a learned, masked change of its weight.

    Attributes:
        base: the wrapped `nn.Linear` / `nn.ConvNd` (possibly already compacted).
        kind: the name this layer's adapter kind is registered under in `ADAPTER_KINDS`.
        base_shape: shape of the original base weight (kept through compaction).
    """

    base: nn.Module
    kind: str
    base_shape: tuple[int, ...]

    def fused_weight(self) -> torch.Tensor:
        """`W_t`: the weight the layer computes with (adapter added, masks applied)."""
        ...

    def fused_bias(self) -> torch.Tensor | None:
        """The bias the layer adds (masked where the kind masks it), or None."""
        ...

    def retained_weights(self) -> int:
        """Entries of the original base weight this layer still keeps under its masks."""
        ...

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters `adapt` unfreezes for this layer (adapter factors, or the weight)."""
        ...

    def learned_parameter_counts(self, counted: set[int]) -> dict[str, int]:
        """dParams of this layer per category ("adapter", "fine-pruned", "bias"), DESIGN §2.

        Only parameters that currently require gradients count. Tensors shared by several
        layers (e.g. a prototype bank) are counted once: their `id` goes into `counted`.
        """
        ...


@runtime_checkable
class ChannelMasked(AdapterLayer, Protocol):
    """An adapter layer pruned by output-row / input-column masks (channel pruning).

    Attributes:
        out_mask: `m_row`, one bool per output channel of `base`.
        in_mask: `m_col`, one bool per weight column of `base` (in/groups for convs).
        out_indices: the original base channel of each row of `base`.
        in_indices: the original base column of each column of `base`.
    """

    out_mask: torch.Tensor
    in_mask: torch.Tensor
    out_indices: torch.Tensor
    in_indices: torch.Tensor

    def select_channels(
        self, out_positions: torch.Tensor | None = None, in_positions: torch.Tensor | None = None
    ) -> None:
        """Physically keep only the given rows / columns (positions in this layer)."""
        ...


@runtime_checkable
class BlockMasked(AdapterLayer, Protocol):
    """An adapter layer over an `nn.Linear` pruned by a `(n/p, m/q)` block mask.

    Attributes:
        block_mask: `M_b`, one bool per `p x q` block.
        block_shape: `(p, q)`.
        block_weights: the adapter's per-block weights `(R, n/p, m/q)` gated with the mask
            while a criterion prunes, or None when the kind learns the weight itself.
        block_gate: training-time gating hook set by a block criterion (None when idle).
    """

    block_mask: torch.Tensor
    block_shape: tuple[int, int]
    block_weights: torch.Tensor | None
    block_gate: GateHook | None

    def weight_mask(self) -> torch.Tensor:
        """`M_b kron J`, the element mask over `base.weight`."""
        ...

    def masked_base_weight(self) -> torch.Tensor:
        """`W_s * (M_b kron J)`."""
        ...

    def unmasked_weight(self) -> torch.Tensor:
        """The adapted weight ignoring the mask (what block scores are computed on), no grad."""
        ...


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Yield `(dotted_name, layer)` for every adapter layer in `model`, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, AdapterLayer):
            yield name, module


def channel_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Yield `(dotted_name, layer)` for every channel-masked adapter layer of `model`."""
    for name, module in model.named_modules():
        if isinstance(module, ChannelMasked):
            yield name, module


def block_prunable_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Yield `(dotted_name, layer)` for every block-masked adapter layer of `model`.

    Args:
        model: a model adapted with a block kind (`SPLoPAConfig`, `BlockFinePruningConfig`).

    Returns:
        An iterator in module order.
    """
    for name, module in model.named_modules():
        if isinstance(module, BlockMasked):
            yield name, module


def is_adapted(model: nn.Module) -> bool:
    """True if `model` contains at least one adapter layer."""
    return next(adapter_layers(model), None) is not None
