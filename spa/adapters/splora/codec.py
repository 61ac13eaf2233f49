"""Bundle entries of channel-pruned layers (`SPLoRALayer`, also the fine-pruning form, rank 0).

Saved per layer: the kept base channels (`out_indices`/`in_indices`), the masks when not all
ones, the factors of kept channels only (`down[m_row]`, `up[:, m_col]`, so storage is
`r (||m_row||_0 + ||m_col||_0)` values as in DESIGN §2), the retained weight
`W[m_row][:, m_col]` only if it differs from the base (fine-pruning), and the bias only if it
differs. Loading rebuilds Eq. 4 as one plain layer::

    W_t = W_s[out_indices][:, in_indices] * (m_row m_col^T) + (W_down m_row)(W_up m_col)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from spa.adapters import _conv
from spa.adapters.protocols import IN_MASK, OUT_MASK
from spa.adapters.splora.equation import splora_weight
from spa.adapters.splora.layer import SPLoRALayer
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
)
from spa.codec.fields import (
    Check,
    check_fields,
    is_count,
    is_flag,
    is_object,
    is_shape,
    is_text,
    one_of,
)
from spa.codec.protocols import Entry, LayerCodec, StoredBundle, WorkBuffers
from spa.codec.records import attribute_changes, replace_parameter, same_tensor, select
from spa.codec.writer import BundleWriter
from spa.errors import BundleError, UnsupportedLayerError


def save_splora(
    name: str, layer: SPLoRALayer, base: nn.Module, writer: BundleWriter
) -> tuple[Entry, int]:
    """Record `layer` relative to base layer `base`; return its entry and its kept weights."""
    weight, base_weight = layer.base.weight.detach(), base.weight.detach()
    device = base_weight.device
    entry: Entry = {
        "path": name,
        "kind": layer.kind,
        "rank": layer.rank,
        "shape": list(weight.shape[:2]),
        "base_shape": list(base_weight.shape),
    }
    out_indices, in_indices = layer.out_indices.to(device), layer.in_indices.to(device)
    writer.add_selections(entry, out_indices, in_indices, tuple(base_weight.shape[:2]))
    out_mask, in_mask = layer.out_mask.to(device), layer.in_mask.to(device)
    for key, mask in ((OUT_MASK, out_mask), (IN_MASK, in_mask)):
        if not bool(mask.all()):
            entry[key] = True
            writer.add_mask(f"{name}:{key}", mask)
    rows, cols = out_mask.nonzero().flatten(), in_mask.nonzero().flatten()
    # A meta weight (`spa.deploy.compacted_for_save`) is a placeholder for the base's own kept
    # values: nothing to compare, nothing to store.
    if not weight.is_meta:
        retained = select(weight.to(device), rows, cols)
        reference = select(select(base_weight, out_indices, in_indices), rows, cols)
        if not same_tensor(retained, reference):
            entry["weight"] = True
            writer.add(f"layers.{name}.weight", retained)  # (kept out, kept in, *kernel)
    bias, base_bias = layer.base.bias, base.bias
    if bias is None:
        if base.bias is not None:
            entry["bias"] = "none"
    else:
        kept_bias = bias.detach().to(device)[rows]
        if base_bias is None or not same_tensor(kept_bias, base_bias[out_indices][rows]):
            entry["bias"] = "stored"
            writer.add(f"layers.{name}.bias", kept_bias)
    if layer.rank > 0:
        writer.add(f"layers.{name}.down", layer.down.to(device)[rows])  # (kept out, r)
        writer.add(f"layers.{name}.up", layer.up.to(device)[:, cols])  # (r, kept in)
    if attributes := attribute_changes(layer.base, base):
        entry["attributes"] = attributes
    kernel = weight[0, 0].numel()
    return entry, rows.numel() * cols.numel() * kernel


@dataclass
class ChannelLayerPlan:
    """A validated SPLoRA entry, ready to build: decoded selections, masks and tensors."""

    entry: Entry
    base: nn.Module
    rows: torch.Tensor | None
    cols: torch.Tensor | None
    out_mask: torch.Tensor
    in_mask: torch.Tensor
    tensors: dict[str, torch.Tensor]

    def build(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fused weight and masked bias of the task layer (new tensors, base untouched)."""
        entry, base = self.entry, self.base
        base_weight = base.weight.detach()
        dtype, device = base_weight.dtype, base_weight.device
        out_mask, in_mask = self.out_mask.to(device), self.in_mask.to(device)
        keep_rows, keep_cols = out_mask.nonzero().flatten(), in_mask.nonzero().flatten()
        if "weight" in self.tensors:  # fine-pruned: retained entries, zero elsewhere
            shape = tuple(entry["shape"]) + tuple(base_weight.shape[2:])
            weight = torch.zeros(shape, dtype=dtype, device=device)
            retained = self.tensors["weight"].to(device, dtype)
            weight[keep_rows[:, None], keep_cols] = retained
        else:
            weight = select(base_weight, self.rows, self.cols)
        rank = entry["rank"]
        down = up = None
        if rank > 0:
            down = torch.zeros(len(out_mask), rank, dtype=dtype, device=device)
            up = torch.zeros(rank, len(in_mask), dtype=dtype, device=device)
            down[keep_rows] = self.tensors["down"].to(device, dtype)
            up[:, keep_cols] = self.tensors["up"].to(device, dtype)
        tap = _conv.centre_tap(base, entry["path"]) if weight.dim() > 2 else None
        weight = splora_weight(weight, out_mask, in_mask, down, up, tap)  # Eq. 4
        return weight, self._bias(out_mask, keep_rows, dtype, device)

    def gather(self) -> ChannelGather | None:
        """The precomputed gather of this layer for repeated builds, or None if `build` must be
        used (a masked or fine-pruned layer: masks not all ones, or a stored weight)."""
        if "weight" in self.tensors or not bool(self.out_mask.all() & self.in_mask.all()):
            return None
        base_weight = self.base.weight.detach()
        dtype, device = base_weight.dtype, base_weight.device
        rows = None if self.rows is None else self.rows.to(device).contiguous()
        cols = None if self.cols is None else self.cols.to(device).contiguous()
        down = up = None
        if self.entry["rank"] > 0:  # fresh copies, as the reference build multiplies
            down = self.tensors["down"].to(device, dtype).clone()
            up = self.tensors["up"].to(device, dtype).clone()
        tap = _conv.centre_tap(self.base, self.entry["path"]) if base_weight.dim() > 2 else None
        full = torch.ones(len(self.out_mask), dtype=torch.bool, device=device)
        bias = self._bias(full, full.nonzero().flatten(), dtype, device)
        shape = tuple(self.entry["shape"]) + tuple(base_weight.shape[2:])
        offsets = None
        if base_weight[0, 0].numel() > 1 and (rows is not None or cols is not None):
            # kernels are gathered by flat (out * in) index: row offset + column
            every = [torch.arange(size, device=device) for size in base_weight.shape[:2]]
            rows, cols = every[0] if rows is None else rows, every[1] if cols is None else cols
            offsets = rows[:, None] * base_weight.shape[1]  # (out, 1)
        return ChannelGather(base_weight, rows, cols, offsets, shape, down, up, tap, bias)

    def _bias(
        self, out_mask: torch.Tensor, keep_rows: torch.Tensor, dtype, device
    ) -> torch.Tensor | None:
        kind = self.entry.get("bias", default_bias(self.base))
        if kind == "none":
            return None
        if kind == "stored":
            bias = torch.zeros(len(out_mask), dtype=dtype, device=device)
            bias[keep_rows] = self.tensors["bias"].to(device, dtype)
            return bias
        base_bias = self.base.bias.detach()
        if self.rows is not None:
            base_bias = base_bias.index_select(0, self.rows.to(device))
        return base_bias * out_mask  # as SPLoRALayer.masked_bias


SPLORA_FIELDS: dict[str, Check] = {
    "path": is_text,
    "kind": one_of("splora", "fine_pruning"),
    "rank": is_count,
    "shape": is_shape(2),
    "base_shape": is_shape(minimum=2),
    "out_selection": one_of(*SELECTIONS),
    "in_selection": one_of(*SELECTIONS),
    "out_mask": is_flag,
    "in_mask": is_flag,
    "weight": is_flag,
    "bias": one_of(*BIAS_KINDS),
    "attributes": is_object,
}


def plan_splora(bundle: StoredBundle, entry: Entry, base: nn.Module | None) -> ChannelLayerPlan:
    """Validate a SPLoRA entry against its base layer without building anything.

    Every field is type- and range-checked, every tensor it names must be stored with the shape
    and dtype the entry implies (and is marked used), and the rebuilt layer must fit its
    attributes.

    Raises:
        BundleError: for a malformed entry, a missing layer, another layer type, or any shape
            or dtype mismatch.
    """
    name = entry.get("path")
    check_fields(
        bundle, entry, f"layer {name!r}", SPLORA_FIELDS, ("path", "rank", "shape", "base_shape")
    )
    check_base_layer(bundle, entry, base, _conv.SUPPORTED_LAYERS)
    base_weight = base.weight
    out_channels, in_columns = entry["shape"]
    rank = entry["rank"]
    rows = decode_selection(bundle, entry, "out", base_weight.shape[0], out_channels)
    cols = decode_selection(bundle, entry, "in", base_weight.shape[1], in_columns)
    out_mask = decode_mask(bundle, entry, OUT_MASK, out_channels)
    in_mask = decode_mask(bundle, entry, IN_MASK, in_columns)
    kept_rows, kept_cols = int(out_mask.sum()), int(in_mask.sum())
    tensors = {}
    if entry.get("weight"):
        shape = (kept_rows, kept_cols) + tuple(base_weight.shape[2:])
        tensors["weight"] = expect(bundle, f"layers.{name}.weight", shape)
    bias_kind = check_bias_kind(bundle, entry, base)
    if bias_kind == "stored":
        tensors["bias"] = expect(bundle, f"layers.{name}.bias", (kept_rows,))
    if rank > 0:
        if kept_rows + kept_cols == 0:
            raise bundle_error(bundle, f"layer {name!r}: rank {rank} with no kept channels")
        tensors["down"] = expect(bundle, f"layers.{name}.down", (kept_rows, rank))
        tensors["up"] = expect(bundle, f"layers.{name}.up", (rank, kept_cols))
        if base_weight.dim() > 2:
            try:
                _conv.centre_tap(base, name)
            except UnsupportedLayerError as error:
                raise bundle_error(bundle, str(error)) from None
    weight_shape = (out_channels, in_columns, *base_weight.shape[2:])
    check_layer_result(bundle, entry, base, weight_shape, bias_kind != "none")
    return ChannelLayerPlan(entry, base, rows, cols, out_mask, in_mask, tensors)


@dataclass
class ChannelGather:
    """Eq. 4 of a compacted channel layer (all masks ones) for repeated builds.

    `W_t = W_s[rows][:, cols] + W_down W_up` (the product at the kernel's centre tap for convs),
    written straight into a new tensor with host-owned scratch space: the same values, bit for
    bit, as `ChannelLayerPlan.build` (copies, then the same product and sum).

    Attributes:
        weight: the base weight `W_s`, `(out, in/groups, *kernel)`, never modified.
        rows: kept base output channels (None: all, in order).
        cols: kept base input channels (None: all, in order).
        offsets: `rows * in` as `(out, 1)` for kernels gathered by flat index (None for Linear
            and 1x1 kernels).
        shape: the task weight's shape.
        down: `W_down` `(out, r)`, or None without an adapter.
        up: `W_up` `(r, in)`, or None.
        tap: centre-tap index for conv weights, None for Linear.
        bias: the task bias (cloned on every build), or None.
    """

    weight: torch.Tensor
    rows: torch.Tensor | None
    cols: torch.Tensor | None
    offsets: torch.Tensor | None
    shape: tuple[int, ...]
    down: torch.Tensor | None
    up: torch.Tensor | None
    tap: tuple | None
    bias: torch.Tensor | None

    def build(self, scratch: WorkBuffers) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fused weight and bias of the task layer (new tensors, base untouched)."""
        base = self.weight
        out = torch.empty(self.shape, dtype=base.dtype, device=base.device)
        rows, cols = self.rows, self.cols
        if rows is None and cols is None:
            out.copy_(base)
        elif self.offsets is not None:  # whole kernels in one gather of flat (out * in) rows
            index = scratch.get("index", self.shape[:2], torch.long, base.device)
            torch.add(self.offsets, cols, out=index)
            flat = base.reshape(base.shape[0] * base.shape[1], -1)  # (out * in, taps)
            torch.index_select(flat, 0, index.view(-1), out=out.view(index.numel(), -1))
        else:  # Linear or 1x1 kernels: kept rows into scratch, then kept columns
            matrix, target = base.reshape(base.shape[0], -1), out.view(self.shape[:2])
            if cols is None:
                torch.index_select(matrix, 0, rows, out=target)
            elif rows is None:
                torch.index_select(matrix, 1, cols, out=target)
            else:
                kept = scratch.get("rows", (len(rows), matrix.shape[1]), base.dtype, base.device)
                torch.index_select(matrix, 0, rows, out=kept)
                torch.index_select(kept, 1, cols, out=target)
        if self.down is not None:
            product = scratch.get("product", self.shape[:2], base.dtype, base.device)
            torch.mm(self.down, self.up, out=product)  # (out, in)
            (out if self.tap is None else out[self.tap]).add_(product)
        return out, None if self.bias is None else self.bias.clone()


def _kept(selection: torch.Tensor | None, mask: torch.Tensor, device) -> torch.Tensor:
    """Base positions of the kept channels: the entry's selection where its mask is set."""
    mask = mask.to(device)
    if selection is None:
        return mask.nonzero().flatten()
    return selection.to(device)[mask]


def restore_splora(plan: ChannelLayerPlan, layer: SPLoRALayer) -> None:
    """Write a validated entry into full-size `layer`: masks keep the entry's kept channels, the
    stored factors, fine-pruned weight and bias go to their kept positions (Eq. 4 unchanged).

    Raises:
        BundleError: if the layer's rank is not the entry's.
    """
    entry, tensors = plan.entry, plan.tensors
    if layer.rank != entry["rank"]:
        raise BundleError(
            f"layer {entry['path']!r}: the bundle records rank {entry['rank']}, the adapted "
            f"layer has rank {layer.rank}"
        )
    base_weight = layer.base.weight.detach()
    dtype, device = base_weight.dtype, base_weight.device
    rows = _kept(plan.rows, plan.out_mask, device)
    cols = _kept(plan.cols, plan.in_mask, device)
    with torch.no_grad():
        for mask, kept in ((layer.out_mask, rows), (layer.in_mask, cols)):
            mask.zero_()
            mask[kept] = True
        if layer.rank > 0:
            layer.down.zero_()
            layer.up.zero_()
            layer.down[rows] = tensors["down"].to(device, dtype)
            layer.up[:, cols] = tensors["up"].to(device, dtype)
        if "weight" in tensors:
            weight = base_weight.clone()
            weight[rows[:, None], cols] = tensors["weight"].to(device, dtype)
            replace_parameter(layer.base, "weight", weight)
        bias_kind = entry.get("bias", default_bias(plan.base))
        if bias_kind == "none":
            replace_parameter(layer.base, "bias", None)
        elif bias_kind == "stored":
            bias = torch.zeros(len(layer.out_mask), dtype=dtype, device=device)
            bias[rows] = tensors["bias"].to(device, dtype)
            replace_parameter(layer.base, "bias", bias)


# SPLoRA's codec, also fine-pruning's (its rank-0 form).
SPLORA_CODEC = LayerCodec(
    save=save_splora, plan=plan_splora, restore=restore_splora, meta_base_weights=True
)
