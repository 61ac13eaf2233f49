"""Bundle entries of block-pruned layers (`SPLoPALinear`) and their prototype banks.

Saved per layer: the bit-packed block mask `M_b`, the block weights of kept blocks only
(`B[:, M_b]`, `R ||M_b||_0` values), a reference to its prototype bank (each bank, shared or
private, is stored once as `banks.<key>.row_factors` / `col_factors`), the retained base entries
only if they differ from the base, and the bias only if it differs. If the layer records kept
base rows/columns (`out_indices` / `in_indices`, after block compaction) they are stored like
channel selections. Loading rebuilds Eq. 6 as one plain `nn.Linear`::

    W_t = W_s * (M_b kron J) + sum_i (M_b * B_i) kron (p_i q_i^T)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from spa.adapters.masks import expand_block_mask
from spa.adapters.protocols import BLOCK_MASK
from spa.adapters.splopa.equation import splopa_weight
from spa.adapters.splopa.layer import SPLoPALinear
from spa.codec.entries import (
    BIAS_KINDS,
    SELECTIONS,
    bundle_error,
    check_base_layer,
    check_bias_kind,
    check_layer_result,
    decode_mask,
    decode_selection,
    default_bias,
    expect,
    shape_mismatch,
)
from spa.codec.fields import (
    Check,
    check_fields,
    is_flag,
    is_object,
    is_positive,
    is_shape,
    is_text,
    one_of,
)
from spa.codec.protocols import Entry, LayerCodec, StoredBundle
from spa.codec.records import attribute_changes, same_tensor, select
from spa.codec.writer import BundleWriter

# The metadata section holding each prototype bank once.
BANKS = "banks"


def _indices(layer: nn.Module, side: str, size: int, device: torch.device) -> torch.Tensor:
    indices = getattr(layer, f"{side}_indices", None)
    return torch.arange(size, device=device) if indices is None else indices.to(device)


def _bank_key(layer: SPLoPALinear, writer: BundleWriter) -> str:
    """The key of the layer's prototype bank; the first layer of a bank stores it."""
    bank = layer.prototypes
    key, first = writer.share(BANKS, bank, "bank")
    if first:
        writer.add(f"banks.{key}.row_factors", bank.row_factors)  # (R, p, r)
        writer.add(f"banks.{key}.col_factors", bank.col_factors)  # (R, q, r)
        record = {
            "key": key,
            "block_shape": list(bank.block_shape),
            "num_prototypes": bank.num_prototypes,
            "prototype_rank": bank.prototype_rank,
        }
        writer.add_record(BANKS, record)
    return key


def save_splopa(
    name: str, layer: SPLoPALinear, base: nn.Module, writer: BundleWriter
) -> tuple[Entry, int]:
    """Record `layer` relative to base layer `base`; return its entry and its kept weights."""
    weight, base_weight = layer.base.weight.detach(), base.weight.detach()
    device = base_weight.device
    rows, cols = layer.block_shape
    entry: Entry = {
        "path": name,
        "kind": layer.kind,
        "block_shape": [rows, cols],
        "num_prototypes": layer.prototypes.num_prototypes,
        "shape": list(weight.shape),
        "base_shape": list(base_weight.shape),
        "bank": _bank_key(layer, writer),
    }
    out_indices = _indices(layer, "out", weight.shape[0], device)
    in_indices = _indices(layer, "in", weight.shape[1], device)
    writer.add_selections(entry, out_indices, in_indices, tuple(base_weight.shape[:2]))
    block_mask = layer.block_mask.to(device)
    if not bool(block_mask.all()):
        entry[BLOCK_MASK] = True
        writer.add_mask(f"{name}:{BLOCK_MASK}", block_mask.flatten())
    writer.add(f"layers.{name}.block_weights", layer.block_weights.to(device)[:, block_mask])
    element_mask = layer.weight_mask().to(device)
    retained = weight.to(device)[element_mask]
    reference = select(base_weight, out_indices, in_indices)[element_mask]
    if not same_tensor(retained, reference):
        entry["weight"] = True
        writer.add(f"layers.{name}.weight", retained)  # kept entries, row-major
    bias, base_bias = layer.base.bias, base.bias
    if bias is None:
        if base_bias is not None:
            entry["bias"] = "none"
    elif base_bias is None or not same_tensor(bias.to(device), base_bias[out_indices]):
        entry["bias"] = "stored"
        writer.add(f"layers.{name}.bias", bias)
    if attributes := attribute_changes(layer.base, base):
        entry["attributes"] = attributes
    return entry, int(block_mask.sum()) * rows * cols


@dataclass
class BlockLayerPlan:
    """A validated SPLoPA entry, ready to build."""

    entry: Entry
    base: nn.Module
    rows: torch.Tensor | None
    cols: torch.Tensor | None
    block_mask: torch.Tensor
    tensors: dict[str, torch.Tensor]

    def build(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fused weight and the bias of the task layer (new tensors, base untouched)."""
        base_weight = self.base.weight.detach()
        dtype, device = base_weight.dtype, base_weight.device
        rows, cols = self.entry["block_shape"]
        block_mask = self.block_mask.to(device)
        if "weight" in self.tensors:
            element_mask = expand_block_mask(block_mask, (rows, cols))
            weight = torch.zeros(self.entry["shape"], dtype=dtype, device=device)
            weight[element_mask] = self.tensors["weight"].to(device, dtype)
        else:
            weight = select(base_weight, self.rows, self.cols)
        stored = self.tensors["block_weights"].to(device, dtype)
        block_weights = torch.zeros(
            (stored.shape[0],) + tuple(block_mask.shape), dtype=dtype, device=device
        )
        block_weights[:, block_mask] = stored  # (R, n/p, m/q)
        row_factors = self.tensors["row_factors"].to(device, dtype)
        col_factors = self.tensors["col_factors"].to(device, dtype)
        weight = splopa_weight(weight, block_mask, block_weights, row_factors, col_factors)  # Eq. 6
        return weight, self._bias(dtype, device)

    def _bias(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        kind = self.entry.get("bias", default_bias(self.base))
        if kind == "none":
            return None
        if kind == "stored":
            return self.tensors["bias"].to(device, dtype)
        bias = self.base.bias.detach()
        return bias.clone() if self.rows is None else bias.index_select(0, self.rows.to(device))


SPLOPA_FIELDS: dict[str, Check] = {
    "path": is_text,
    "kind": one_of("splopa"),
    "block_shape": is_shape(2),
    "num_prototypes": is_positive,
    "shape": is_shape(2),
    "base_shape": is_shape(2),
    "bank": is_text,
    "out_selection": one_of(*SELECTIONS),
    "in_selection": one_of(*SELECTIONS),
    "block_mask": is_flag,
    "weight": is_flag,
    "bias": one_of(*BIAS_KINDS),
    "attributes": is_object,
}
BANK_FIELDS: dict[str, Check] = {
    "key": is_text,
    "block_shape": is_shape(2),
    "num_prototypes": is_positive,
    "prototype_rank": is_positive,
}
_REQUIRED = ("path", "kind", "block_shape", "num_prototypes", "shape", "base_shape", "bank")


def plan_splopa(bundle: StoredBundle, entry: Entry, base: nn.Module | None) -> BlockLayerPlan:
    """Validate a SPLoPA entry (and its bank) against its base layer without building anything.

    Every field is type- and range-checked, the entry must agree with its bank (block shape,
    prototype count), every tensor it names must be stored with the implied shape and dtype
    (and is marked used), and the rebuilt layer must fit its attributes.

    Raises:
        BundleError: for a malformed entry, a missing layer, a non-Linear base, or any shape or
            dtype mismatch.
    """
    name = entry.get("path")
    check_fields(bundle, entry, f"layer {name!r}", SPLOPA_FIELDS, _REQUIRED)
    check_base_layer(bundle, entry, base, (nn.Linear,))
    out_features, in_features = entry["shape"]
    rows, cols = entry["block_shape"]
    num_prototypes = entry["num_prototypes"]
    key = entry["bank"]
    bank = next((b for b in bundle.metadata[BANKS] if b.get("key") == key), None)
    if bank is None:
        raise bundle_error(bundle, f"layer {name!r}: prototype bank {key!r} is missing")
    check_fields(bundle, bank, f"bank {key!r}", BANK_FIELDS, BANK_FIELDS)
    if bank["block_shape"] != [rows, cols] or bank["num_prototypes"] != num_prototypes:
        raise bundle_error(
            bundle,
            f"layer {name!r}: block_shape {[rows, cols]} / num_prototypes {num_prototypes} "
            f"differ from bank {key!r} ({bank['block_shape']} / {bank['num_prototypes']})",
        )
    rank = bank["prototype_rank"]
    if out_features % rows or in_features % cols:
        raise shape_mismatch(
            bundle,
            name,
            f"({out_features}, {in_features}) is not divisible by block_shape ({rows}, {cols})",
        )
    base_weight = base.weight
    row_sel = decode_selection(bundle, entry, "out", base_weight.shape[0], out_features)
    col_sel = decode_selection(bundle, entry, "in", base_weight.shape[1], in_features)
    grid = (out_features // rows, in_features // cols)
    block_mask = decode_mask(bundle, entry, BLOCK_MASK, grid[0] * grid[1]).reshape(grid)
    kept = int(block_mask.sum())
    tensors = {
        "block_weights": expect(bundle, f"layers.{name}.block_weights", (num_prototypes, kept)),
        "row_factors": expect(bundle, f"banks.{key}.row_factors", (num_prototypes, rows, rank)),
        "col_factors": expect(bundle, f"banks.{key}.col_factors", (num_prototypes, cols, rank)),
    }
    if entry.get("weight"):
        tensors["weight"] = expect(bundle, f"layers.{name}.weight", (kept * rows * cols,))
    bias_kind = check_bias_kind(bundle, entry, base)
    if bias_kind == "stored":
        tensors["bias"] = expect(bundle, f"layers.{name}.bias", (out_features,))
    check_layer_result(bundle, entry, base, (out_features, in_features), bias_kind != "none")
    return BlockLayerPlan(entry, base, row_sel, col_sel, block_mask, tensors)


SPLOPA_CODEC = LayerCodec(save=save_splopa, plan=plan_splopa, sections=(BANKS,))
