"""A test-only adapter kind with its own bundle codec (`AdapterKind.codec`), not registered.

`W_t = W_s + Delta` with a full learned `Delta`. Its codec stores `Delta` as a sign-split pair
(`layers.<name>.positive` / `negative`), a layout no other codec uses, so a bundle that loads
exactly proves the writer and the loader went through this codec. Tests register `DELTA`
for their own duration only (`monkeypatch.setitem(ADAPTER_KINDS._items, ...)`), so the contract
table's "every registered kind has a case" still holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from spa.adapters import AdapterKind
from spa.adapters.config import ModuleSelection, check_common
from spa.codec import BundleWriter, Entry, LayerCodec, StoredBundle
from spa.codec.entries import bundle_error, check_base_layer, expect

DELTA_KIND = "test_sign_split_delta"
calls: list[str] = []  # which codec functions ran, in order (for the tests)


@dataclass(frozen=True, kw_only=True)
class DeltaConfig:
    """The common selection fields; the delta has no options."""

    target_modules: ModuleSelection = None
    exclude_modules: ModuleSelection = None
    trainable: tuple[str, ...] = ("head",)
    head_modules: ModuleSelection = None

    def __post_init__(self) -> None:
        check_common(self)


class DeltaLinear(nn.Module):
    """A frozen `nn.Linear` plus a full learned delta of its weight."""

    kind = DELTA_KIND

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        self.base_shape = tuple(base.weight.shape)
        self.delta = nn.Parameter(torch.zeros_like(base.weight))

    def fused_weight(self) -> torch.Tensor:
        """`W_s + Delta`."""
        return self.base.weight + self.delta

    def fused_bias(self) -> torch.Tensor | None:
        """The base bias."""
        return self.base.bias

    def retained_weights(self) -> int:
        """Every base weight."""
        return self.base.weight.numel()

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The delta."""
        return [self.delta]

    def learned_parameter_counts(self, counted: set[int]) -> dict[str, int]:
        """Every delta entry."""
        return {"adapter": self.delta.numel()} if self.delta.requires_grad else {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x W_t^T + b`."""
        return nn.functional.linear(x, self.fused_weight(), self.fused_bias())


def _save(
    name: str, layer: DeltaLinear, base: nn.Module, writer: BundleWriter
) -> tuple[Entry, int]:
    calls.append("save")
    delta = layer.delta.detach()
    writer.add(f"layers.{name}.positive", delta.clamp(min=0))
    writer.add(f"layers.{name}.negative", (-delta).clamp(min=0))
    entry = {"path": name, "kind": DELTA_KIND, "base_shape": list(base.weight.shape)}
    return entry, base.weight.numel()


@dataclass
class _Plan:
    entry: Entry
    base: nn.Module
    delta: torch.Tensor

    def build(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        bias = self.base.bias
        weight = self.base.weight.detach() + self.delta.to(self.base.weight)
        return weight, None if bias is None else bias.detach().clone()


def _plan(bundle: StoredBundle, entry: Entry, base: nn.Module | None) -> _Plan:
    calls.append("plan")
    if set(entry) != {"path", "kind", "base_shape"}:
        raise bundle_error(bundle, f"layer {entry.get('path')!r}: malformed delta entry")
    check_base_layer(bundle, entry, base, (nn.Linear,))
    name, shape = entry["path"], tuple(base.weight.shape)
    positive = expect(bundle, f"layers.{name}.positive", shape)
    negative = expect(bundle, f"layers.{name}.negative", shape)
    return _Plan(entry, base, positive - negative)


DELTA = AdapterKind(
    name=DELTA_KIND,
    config_type=DeltaConfig,
    layer_types=(nn.Linear,),
    make_layer=lambda module, config, name, context: DeltaLinear(module),
    codec=LayerCodec(save=_save, plan=_plan),
)
