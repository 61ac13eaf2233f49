"""The read side of the layer codecs: kept base channels and masks decoded, tensors and base
layers checked (the write side is `spa.codec.writer`, tensor comparisons `spa.codec.records`)."""

from __future__ import annotations

import torch
from torch import nn

from spa.codec.protocols import STORAGE_DTYPES, Entry, StoredBundle
from spa.codec.records import check_attribute_changes, expected_shapes
from spa.errors import BundleError


def bundle_error(bundle: StoredBundle, message: str) -> BundleError:
    """A `BundleError` whose message starts with the bundle's path."""
    return BundleError(f"{bundle.path or 'bundle'}: {message}")


def shape_mismatch(bundle: StoredBundle, name: str, detail: str) -> BundleError:
    """A `BundleError` for a stored shape of layer `name` that does not fit, saying how."""
    return bundle_error(bundle, f"shape mismatch at layer {name!r}: {detail}")


def decode_selection(
    bundle: StoredBundle, entry: Entry, side: str, size: int, count: int
) -> torch.Tensor | None:
    """The base-channel indices a layer keeps on `side` (None for all, in order); validated.

    Raises:
        BundleError: if the selection does not fit a base layer with `size` channels or does not
            select `count` channels.
    """
    name, kind = entry["path"], entry.get(f"{side}_selection", "all")
    if kind == "all":
        indices = None
        selected = size
    elif kind == "mask":
        mask = bundle.mask(f"{name}:{side}_kept")
        if mask.numel() != size:
            raise shape_mismatch(
                bundle,
                name,
                f"the bundle selects from {mask.numel()} {side}put channels, the base layer has "
                f"{size}",
            )
        indices = mask.nonzero().flatten()
        selected = indices.numel()
    elif kind == "indices":
        stored = expect(bundle, f"layers.{name}.{side}_indices", (count,), torch.int32)
        indices = stored.long()
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= size):
            raise bundle_error(
                bundle, f"layer {name!r}: {side}put channel index outside the base's {size}"
            )
        if indices.unique().numel() != indices.numel():
            raise bundle_error(bundle, f"layer {name!r}: repeated {side}put channel index")
        selected = indices.numel()
    else:
        raise bundle_error(bundle, f"layer {name!r}: unknown {side} selection {kind!r}")
    if selected != count:
        raise shape_mismatch(
            bundle,
            name,
            f"{selected} {side}put channels selected from the base, the task layer has {count}",
        )
    return indices


def decode_mask(bundle: StoredBundle, entry: Entry, key: str, length: int) -> torch.Tensor:
    """The layer's boolean mask `key` (all ones when the bundle stores none), length-checked."""
    if not entry.get(key):
        return torch.ones(length, dtype=torch.bool)
    mask = bundle.mask(f"{entry['path']}:{key}")
    if mask.numel() != length:
        raise shape_mismatch(
            bundle, entry["path"], f"{key} has {mask.numel()} entries, expected {length}"
        )
    return mask


def storage_dtype(bundle: StoredBundle) -> torch.dtype:
    """The dtype the bundle declares for its floating-point tensors."""
    return STORAGE_DTYPES[bundle.metadata["dtype"]]


def expect(
    bundle: StoredBundle, name: str, shape: tuple[int, ...], dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The stored tensor `name`, checked to have `shape` and `dtype` (default: the storage
    dtype), and marked as used.

    Raises:
        BundleError: naming the tensor if it is missing or has another shape or dtype.
    """
    tensor = bundle.tensors.get(name)
    if tensor is None:
        raise bundle_error(bundle, f"tensor {name!r} is missing; the file is damaged")
    if tuple(tensor.shape) != tuple(shape):
        raise bundle_error(
            bundle,
            f"shape mismatch for {name!r}: stored {tuple(tensor.shape)}, expected {tuple(shape)}",
        )
    dtype = storage_dtype(bundle) if dtype is None else dtype
    if tensor.dtype != dtype:
        raise bundle_error(bundle, f"tensor {name!r} is stored as {tensor.dtype}, expected {dtype}")
    bundle.used.add(name)
    return tensor


def check_base_layer(
    bundle: StoredBundle, entry: Entry, base: nn.Module, types: tuple[type, ...]
) -> None:
    """Check the base module for a layer entry exists, has a supported type and its shape.

    Raises:
        BundleError: for a missing layer, another type or a shape mismatch.
    """
    name = entry["path"]
    if base is None:
        raise bundle_error(
            bundle,
            f"layer {name!r} is missing from the base model; the bundle was made for "
            f"{bundle.metadata.get('architecture')!r}",
        )
    if not isinstance(base, types):
        raise bundle_error(
            bundle,
            f"layer {name!r} is a {type(base).__name__} in the base model, not a layer "
            "this bundle can rebuild",
        )
    if list(base.weight.shape) != entry["base_shape"]:
        raise shape_mismatch(
            bundle,
            name,
            f"base weight {tuple(base.weight.shape)}, bundle expects {tuple(entry['base_shape'])}",
        )


def check_layer_result(
    bundle: StoredBundle, entry: Entry, base: nn.Module, weight_shape: tuple[int, ...], bias: bool
) -> None:
    """Check that the rebuilt layer's weight and bias fit its (possibly changed) attributes.

    Raises:
        BundleError: for an attribute that cannot change or a tensor its attributes contradict.
    """
    name, changes = entry["path"], entry.get("attributes", {})
    problem = check_attribute_changes(base, changes)
    if problem:
        raise bundle_error(bundle, f"layer {name!r}: {problem}")
    shapes = expected_shapes(base, changes)
    built = {"weight": tuple(weight_shape), "bias": (weight_shape[0],) if bias else None}
    for key, shape in built.items():
        if shape is not None and key in shapes and tuple(shapes[key]) != shape:
            raise shape_mismatch(
                bundle,
                name,
                f"the rebuilt {key} is {shape}, its attributes {changes} imply "
                f"{tuple(shapes[key])}",
            )


def check_bias_kind(bundle: StoredBundle, entry: Entry, base: nn.Module) -> str:
    """The layer's bias kind, checked against the base layer and the declared method.

    A layer keeps the base's bias unless biases were trained ("bias" or "all" among the
    declared trainable groups, which allows a stored bias); it never drops a base bias.

    Raises:
        BundleError: for a bias kind the base layer or the declared method rules out.
    """
    name, kind = entry["path"], entry.get("bias", default_bias(base))
    adapter = bundle.metadata.get("adapter") or {}
    trained = set(adapter.get("config", {}).get("trainable", ["all"])) & {"bias", "all"}
    if kind == "base" and base.bias is None:
        raise bundle_error(bundle, f"layer {name!r} uses the base bias, the base layer has none")
    if kind == "none" and base.bias is not None:
        raise bundle_error(bundle, f"layer {name!r} drops the base layer's bias")
    if kind == "stored" and base.bias is not None and not trained:
        raise bundle_error(
            bundle, f"layer {name!r} stores a bias, but the declared method does not train biases"
        )
    return kind


SELECTIONS = ("all", "mask", "indices")
BIAS_KINDS = ("base", "stored", "none")


def default_bias(base: nn.Module) -> str:
    """The bias kind of an entry that records none: the base's bias, or none if it has none."""
    return "none" if base.bias is None else "base"
