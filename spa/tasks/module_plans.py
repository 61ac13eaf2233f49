"""Planning a bundle's module entries: changed norm, head and other module tensors, checked
against the base module (names, kinds, dtypes, shapes, folded norms) before anything is built."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from spa.codec.entries import bundle_error, expect, storage_dtype
from spa.codec.records import check_attribute_changes, direct_tensors, expected_shapes
from spa.tasks.channel_slices import is_channel_slice
from spa.tasks.format import Bundle
from spa.tasks.schema import MODULE_FIELDS, check_fields, is_text

_FOLDED_KEYS = frozenset({"weight", "bias", "running_mean", "running_var"})


def _plan_tensor(
    bundle: Bundle, path: str, key: str, record: Any, module: nn.Module
) -> torch.Tensor:
    """Check one recorded module tensor against the base module (kind, dtype); return it."""
    if key in module._parameters:
        kind, base_tensor = "parameter", module._parameters[key]
    elif key in module._buffers and key not in module._non_persistent_buffers_set:
        kind, base_tensor = "buffer", module._buffers[key]
    else:
        raise bundle_error(bundle, f"module {path!r} has no parameter or buffer {key!r}")
    if not (isinstance(record, list) and len(record) == 2 and all(map(is_text, record))):
        raise bundle_error(bundle, f"module {path!r}: bad tensor record {key}={record!r}")
    dtype = getattr(torch, record[1], None)
    if record[0] != kind or not isinstance(dtype, torch.dtype):
        raise bundle_error(bundle, f"module {path!r}: bad tensor record {key}={record!r}")
    base_dtype = None if base_tensor is None else base_tensor.dtype
    if dtype != base_dtype and (base_dtype is not None or not dtype.is_floating_point):
        raise bundle_error(
            bundle, f"module {path!r}: tensor {key!r} declared {dtype}, the base has {base_dtype}"
        )
    stored = bundle.tensors.get(f"modules.{path}.{key}")
    if stored is None:
        raise bundle_error(bundle, f"tensor 'modules.{path}.{key}' is missing; damaged file")
    stored_dtype = storage_dtype(bundle) if dtype.is_floating_point else dtype
    return expect(bundle, f"modules.{path}.{key}", tuple(stored.shape), stored_dtype)


def _plan_narrowed(
    bundle: Bundle, path: str, key: str, record: Any, module: nn.Module
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Check a base tensor narrowed to kept indices (see `spa.codec.records.narrowing`);
    return the indices and the narrowed shape."""
    tensors = direct_tensors(module)
    if not (
        isinstance(record, list)
        and len(record) == 2
        and record[0] in ("parameter", "buffer")
        and isinstance(record[1], int)
        and not isinstance(record[1], bool)
        and key in tensors
        and tensors[key][0] == record[0]
        and 0 <= record[1] < tensors[key][1].dim()
    ):
        raise bundle_error(bundle, f"module {path!r}: bad narrowed tensor record {key}={record!r}")
    axis, shape = record[1], list(tensors[key][1].shape)
    name = f"modules.{path}.{key}"
    stored = bundle.tensors.get(name)
    count = stored.numel() if stored is not None and stored.dim() == 1 else -1
    indices = expect(bundle, name, (max(count, 0),), torch.int64)
    if not 1 <= count <= shape[axis] or not (
        int(indices[0]) >= 0
        and int(indices[-1]) < shape[axis]
        and bool((indices[1:] > indices[:-1]).all())
    ):
        raise bundle_error(
            bundle,
            f"{name}: kept indices must increase strictly within the base's {shape[axis]} "
            f"slices on axis {axis}; the bundle was altered",
        )
    shape[axis] = count
    return indices, tuple(shape)


def plan_module(
    bundle: Bundle,
    entry: dict[str, Any],
    base_modules: dict[str, nn.Module],
    axes: dict[str, int],
) -> dict[str, torch.Tensor]:
    """The validated tensors of module entry `entry` (a `BundleError` names what is wrong).

    `axes` maps the dotted path of each described tensor pruning may narrow (per-head tensors,
    embeddings and class tokens, see `spa.families.sliced_tensor_axes`) to its narrowed axis.
    """
    path = entry.get("path")
    check_fields(bundle, entry, f"module {path!r}", MODULE_FIELDS, ("path",))
    module = base_modules.get(path)
    if module is None:
        raise bundle_error(
            bundle,
            f"module {path!r} is missing from the base model; the bundle was made for "
            f"{bundle.metadata.get('architecture')!r}",
        )
    attributes = entry.get("attributes", {})
    problem = check_attribute_changes(module, attributes)
    if problem:
        raise bundle_error(bundle, f"module {path!r}: {problem}")
    records, removed = entry.get("tensors", {}), entry.get("none", [])
    narrowed = entry.get("narrowed", {})
    folded = entry.get("folded_norm", False)
    overlap = (set(records) & set(removed)) | (set(narrowed) & (set(records) | set(removed)))
    if folded:
        overlap |= (set(records) | set(removed)) & _FOLDED_KEYS
    if overlap:
        raise bundle_error(bundle, f"module {path!r}: tensors {sorted(overlap)} recorded twice")
    tensors = {}
    final = {key: tuple(t.shape) for key, (_, t) in direct_tensors(module).items()}
    for key, record in records.items():
        tensors[key] = _plan_tensor(bundle, path, key, record, module)
        final[key] = tuple(tensors[key].shape)
    for key, record in narrowed.items():
        tensors[key], final[key] = _plan_narrowed(bundle, path, key, record, module)
    for key in removed:
        if module._parameters.get(key) is None:
            raise bundle_error(bundle, f"module {path!r} has no parameter {key!r} to remove")
        final.pop(key)
    if folded:
        if not (
            isinstance(module, nn.modules.batchnorm._BatchNorm)
            and module.affine
            and module.running_mean is not None
        ):
            raise bundle_error(bundle, f"module {path!r}: folded norm needs an affine BatchNorm")
        channels = attributes.get("num_features", module.num_features)
        tensors["folded"] = expect(bundle, f"modules.{path}.folded", (2, channels))
        final.update(dict.fromkeys(_FOLDED_KEYS, (channels,)))
    axes = {key: axes[f"{path}.{key}"] for key in final if f"{path}.{key}" in axes}
    _check_module_shapes(bundle, path, module, attributes, final, axes)
    return tensors


def _check_module_shapes(
    bundle: Bundle,
    path: str,
    module: nn.Module,
    attributes: dict[str, Any],
    final: dict[str, tuple[int, ...]],
    axes: dict[str, int],
) -> None:
    """Every tensor of the changed module must fit its type's shape rule (or, for module types
    without one, keep the base's number of dimensions, and its exact shape when no attribute
    changes, except a per-channel vector or a per-head tensor (head axis in `axes`) narrowed on
    its channel axis)."""
    expected = expected_shapes(module, attributes)
    base = {key: tuple(t.shape) for key, (_, t) in direct_tensors(module).items()}
    for key, shape in final.items():
        if key in expected:
            want = tuple(expected[key])
        elif key in base and (not attributes or len(shape) != len(base[key])):
            want = base[key]
            if not attributes and is_channel_slice(shape, want, axes.get(key)):
                continue  # a bare per-channel scale or per-head tensor sliced with its group
        else:
            continue
        if shape != want:
            raise bundle_error(
                bundle,
                f"shape mismatch at module {path!r}: {key} would be {shape}, expected {want}",
            )
