"""Module tensors a bundle may narrow with their channel group, and the check that per-head
tensors keep as many heads as their block.

Channel pruning slices a bare per-channel parameter (ConvNeXt's layer scale, issue 11) or a
described per-head tensor (Swin's relative position bias table, issue 12,
`spa.families.AttentionDescription.per_head`) without changing any attribute of the module
that owns it, so a bundle records it as a module tensor of a smaller shape.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from spa.adapters.transposed import out_features
from spa.codec.entries import bundle_error
from spa.errors import ConfigError
from spa.families import block_layouts, describe, head_rows
from spa.families.layouts import tensor_at
from spa.tasks.format import Bundle


def is_channel_slice(
    stored: tuple[int, ...], base: tuple[int, ...], axis: int | None = None
) -> bool:
    """True if shape `stored` is shape `base` narrowed on its channel axis: the given `axis`
    (a described per-head tensor), or else the one axis of a per-channel vector.

    Channel pruning slices bare per-channel parameters (e.g. ConvNeXt's layer scale, issue 11)
    and per-head tensors (e.g. Swin's relative position bias table, issue 12) with their group
    without changing any attribute of the module that owns them.
    """
    axes = [d for d, size in enumerate(base) if size > 1] if axis is None else [axis]
    if len(stored) != len(base) or len(axes) != 1 or not 0 <= axes[0] < len(base):
        return False
    changed = [d for d in range(len(base)) if stored[d] != base[d]]
    return changed == axes and 1 <= stored[axes[0]] < base[axes[0]]


def check_per_head(
    bundle: Bundle,
    base_model: nn.Module,
    layers: list[Any],
    modules: list[tuple[dict[str, Any], dict[str, torch.Tensor]]],
) -> None:
    """Every described per-head tensor must keep one slice per head its block keeps (a
    one-head table would otherwise broadcast silently over the kept heads).

    Args:
        bundle: the bundle being planned.
        base_model: the plain base model, of a family with per-head tensors.
        layers: the planned layer entries (objects with `.entry`).
        modules: the planned module entries and their checked tensors.

    Raises:
        BundleError: naming the tensor, its head count and the query projection's.
    """
    family = describe(base_model)
    attributes = {layer.entry["path"]: layer.entry.get("attributes", {}) for layer in layers}
    attributes.update({entry["path"]: entry.get("attributes", {}) for entry, _ in modules})
    shapes = {
        f"{entry['path']}.{key}": _planned_shape(base_model, entry, key, tensor)
        for entry, found in modules
        for key, tensor in found.items()
    }

    def rows(path: str) -> int:
        planned = attributes.get(path, {}).get("out_features")
        return planned if planned is not None else out_features(base_model.get_submodule(path))

    for layout in block_layouts(base_model, family):
        try:
            resolved = head_rows(layout, rows)
        except ConfigError as error:
            raise bundle_error(bundle, f"{error}; the bundle was altered") from None
        for path, axis, projection, heads in [
            *((p, a, resolved.query, resolved.heads) for p, a in layout.per_head),
            *((p, a, resolved.key, resolved.kv_heads) for p, a in layout.per_kv_head),
        ]:
            shape = shapes[path] if path in shapes else tuple(tensor_at(base_model, path).shape)
            if shape[axis] != heads:
                raise bundle_error(
                    bundle,
                    f"{path} would keep {shape[axis]} heads on axis {axis}, but {projection} "
                    f"keeps {heads}; the bundle was altered",
                )


def _planned_shape(base_model: nn.Module, entry: dict, key: str, tensor: torch.Tensor):
    """The shape a planned module tensor will have: its own, or for a narrowed base tensor
    (stored as kept indices) the base's with the narrowed axis shortened."""
    record = entry.get("narrowed", {}).get(key)
    if record is None:
        return tuple(tensor.shape)
    shape = list(tensor_at(base_model, f"{entry['path']}.{key}").shape)
    shape[record[1]] = tensor.numel()
    return tuple(shape)
