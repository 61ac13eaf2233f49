"""A bundle codec for any registered adapter kind, built from the adapter protocols alone.

A kind without a codec of its own (`AdapterKind.codec`) is saved as: its construction
options (`AdapterKind.layer_options`), the base channels a channel-masked layer still holds
(`out_indices` / `in_indices`, as channel selections), and every tensor of the layer's
`state_dict` except base tensors equal to the base model's (they are referenced, not copied).
Loading rebuilds an untrained layer of the kind over the selected base slice
(`AdapterKind.from_bundle`), loads the stored tensors into it strictly (names, shapes and
dtypes checked), and takes its own `fused_weight()` / `fused_bias()`: the kind's equation is
the only one used. Masks are stored as plain boolean tensors, and adapter tensors are stored
whole (compact the model first, as `save_task` does by default, to keep them small).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from spa.adapters import _conv
from spa.adapters.protocols import ChannelMasked
from spa.adapters.registry import ADAPTER_KINDS, AdapterKind
from spa.codec.entries import (
    SELECTIONS,
    bundle_error,
    check_base_layer,
    decode_selection,
)
from spa.codec.fields import Check, check_fields, is_object, is_shape, is_text, one_of
from spa.codec.protocols import Entry, StoredBundle
from spa.codec.records import attribute_changes, same_tensor, select
from spa.codec.writer import BundleWriter
from spa.errors import ConfigError, SpaError

_INDICES = ("out_indices", "in_indices")
_BASE_TENSORS = ("base.weight", "base.bias")


def _kind_with_options(name: str) -> AdapterKind:
    kind = ADAPTER_KINDS.get(name)
    if kind.layer_options is None or kind.from_bundle is None:
        raise ConfigError(
            f"save_task: adapter kind {name!r} has no bundle codec; give its AdapterKind a "
            "codec, or layer_options and from_bundle"
        )
    return kind


def _selections(layer: nn.Module, base: nn.Module) -> tuple[torch.Tensor | None, ...]:
    if not isinstance(layer, ChannelMasked):
        return None, None
    device = base.weight.device
    return layer.out_indices.to(device), layer.in_indices.to(device)


def save_generic(
    name: str, layer: nn.Module, base: nn.Module, writer: BundleWriter
) -> tuple[Entry, int]:
    """Record `layer` relative to base layer `base`; return its entry and its kept weights."""
    kind = _kind_with_options(layer.kind)
    base_weight = base.weight.detach()
    entry: Entry = {
        "path": name,
        "kind": layer.kind,
        "options": kind.layer_options(layer),
        "shape": list(layer.base.weight.shape),
        "base_shape": list(base_weight.shape),
    }
    rows, cols = _selections(layer, base)
    for side, indices, size in (("out", rows, base_weight.shape[0]), ("in", cols, size_in(base))):
        if indices is not None:
            writer.add_selection(entry, side, indices, size)
    references = {"base.weight": select(base_weight, rows, cols)}
    if base.bias is not None:
        references["base.bias"] = base.bias.detach() if rows is None else base.bias[rows]
    state = {}
    for key, tensor in layer.state_dict().items():
        if key in _INDICES or (key in references and same_tensor(tensor, references[key])):
            continue
        writer.add(f"layers.{name}.state.{key}", tensor)
        state[key] = str(tensor.dtype).removeprefix("torch.")
    entry["state"] = state
    if attributes := attribute_changes(layer.base, base):
        entry["attributes"] = attributes
    return entry, layer.retained_weights()


def size_in(base: nn.Module) -> int:
    """Columns of the base weight (in/groups for convs)."""
    return base.weight.shape[1]


@dataclass
class GenericLayerPlan:
    """A validated entry of a kind without its own codec, ready to build."""

    entry: Entry
    base: nn.Module
    kind: AdapterKind
    rows: torch.Tensor | None
    cols: torch.Tensor | None
    tensors: dict[str, torch.Tensor]
    bundle: StoredBundle

    def layer(self) -> nn.Module:
        """The adapter layer rebuilt over the base slice with the stored tensors."""
        base, bundle, name = self.base, self.bundle, self.entry["path"]
        weight = select(base.weight, self.rows, self.cols)
        bias = base.bias
        if bias is not None:
            bias = bias.detach() if self.rows is None else bias.detach()[self.rows]
        try:
            layer = self.kind.from_bundle(
                _conv.rebuild_layer(base, weight, bias), self.entry["options"], name
            )
        except (SpaError, TypeError, ValueError, KeyError) as error:
            raise bundle_error(bundle, f"layer {name!r}: cannot rebuild it ({error})") from None
        expected = layer.state_dict()
        state = {k: v for k, v in expected.items() if k in _BASE_TENSORS}
        for key, size, selected in (("out_indices", 0, self.rows), ("in_indices", 1, self.cols)):
            if key in expected:
                state[key] = (
                    torch.arange(weight.shape[size]) if selected is None else selected
                ).to(expected[key])
        for key, tensor in self.tensors.items():
            if key not in expected:
                raise bundle_error(bundle, f"layer {name!r}: unexpected tensor {key!r}")
            reference = expected[key]
            if tensor.shape != reference.shape or (
                tensor.is_floating_point() != reference.is_floating_point()
                or (not tensor.is_floating_point() and tensor.dtype != reference.dtype)
            ):
                raise bundle_error(
                    bundle,
                    f"layer {name!r}: tensor {key!r} is {tensor.dtype} {tuple(tensor.shape)}, "
                    f"expected {reference.dtype} {tuple(reference.shape)}",
                )
            state[key] = tensor.to(reference)
        missing = sorted(set(expected) - set(state))
        if missing:
            raise bundle_error(bundle, f"layer {name!r}: tensors {missing} are missing")
        layer.load_state_dict(state, strict=True)
        return layer

    def build(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fused weight and bias of the task layer (new tensors, base untouched)."""
        layer = self.layer().eval()
        with torch.no_grad():
            weight = layer.fused_weight().detach().clone()
            bias = layer.fused_bias()
        return weight, None if bias is None else bias.detach().clone()


def _is_state(value: Any) -> bool:
    return isinstance(value, dict) and all(
        is_text(key) and is_text(dtype) for key, dtype in value.items()
    )


GENERIC_FIELDS: dict[str, Check] = {
    "path": is_text,
    "kind": is_text,
    "options": is_object,
    "shape": is_shape(minimum=2),
    "base_shape": is_shape(minimum=2),
    "out_selection": one_of(*SELECTIONS),
    "in_selection": one_of(*SELECTIONS),
    "state": _is_state,
    "attributes": is_object,
}


def plan_generic(bundle: StoredBundle, entry: Entry, base: nn.Module | None) -> GenericLayerPlan:
    """Validate an entry of a kind without its own codec against its base layer.

    Raises:
        BundleError: for an unknown kind, a missing layer, another layer type, or any tensor
            whose name, shape or dtype the rebuilt layer does not have.
    """
    name = entry["path"]
    check_fields(
        bundle, entry, f"layer {name!r}", GENERIC_FIELDS, ("path", "kind", "options", "shape")
    )
    kind_name = entry.get("kind")
    if kind_name not in ADAPTER_KINDS:
        raise bundle_error(
            bundle,
            f"layer {name!r}: unknown adapter kind {kind_name!r}; known: {ADAPTER_KINDS.names()}",
        )
    kind = ADAPTER_KINDS.get(kind_name)
    if kind.from_bundle is None:
        raise bundle_error(bundle, f"layer {name!r}: malformed entry for kind {kind_name!r}")
    check_base_layer(bundle, entry, base, kind.layer_types)
    shape = [int(v) for v in entry["shape"]]
    rows = decode_selection(bundle, entry, "out", base.weight.shape[0], shape[0])
    cols = decode_selection(bundle, entry, "in", size_in(base), shape[1])
    tensors = {}
    for key in entry.get("state", {}):
        stored = bundle.tensors.get(f"layers.{name}.state.{key}")
        if stored is None:
            raise bundle_error(bundle, f"tensor 'layers.{name}.state.{key}' is missing")
        bundle.used.add(f"layers.{name}.state.{key}")
        tensors[key] = stored
    plan = GenericLayerPlan(entry, base, kind, rows, cols, tensors, bundle)
    plan.layer()  # validates every tensor now; building repeats it on demand
    return plan
