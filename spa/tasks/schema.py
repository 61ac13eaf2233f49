"""Typed, range-checked fields of a bundle's metadata document, checked before anything is built.

A bundle's JSON may come from a hostile sender who recomputed the in-file checksum, so every
field is checked for its type and range (a JSON `true` is not a count, `"4"` is not a rank) and
unknown fields are refused. `needed_modules` derives, from the base model and the declared
adapter method, the modules whose trained values a bundle must record, so dropping one is
refused instead of silently reusing the base's values.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from spa.adapters.modules import is_norm
from spa.codec.fields import (
    Check,
    check_fields,
    is_count,
    is_flag,
    is_object,
    is_text,
    is_text_list,
    one_of,
    optional,
)
from spa.tasks.codecs import codec_sections
from spa.tasks.format import STORAGE_DTYPES, Bundle


def _is_fraction(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1


def _is_count_table(value: Any) -> bool:
    return isinstance(value, dict) and all(map(is_count, value.values()))


def _is_adapter(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and set(value) == {"type", "config", "head"}
        and is_text(value["type"])
        and is_object(value["config"])
        and is_text_list(value["head"])
        and is_text_list(value["config"].get("trainable", []))
    )


def _is_list_of_objects(value: Any) -> bool:
    return isinstance(value, list) and all(map(is_object, value))


DOCUMENT_FIELDS: dict[str, Check] = {
    "format": is_text,
    "format_version": is_count,
    "spa_version": is_text,
    "architecture": is_text,
    "model_name": optional(is_text),
    "model_options": optional(is_object),
    "base_fingerprint": is_text,
    "base_structure": is_text,
    "adapter": optional(_is_adapter),
    "dtype": one_of(*STORAGE_DTYPES),
    "norm_statistics": one_of("folded", "exact"),
    "density": _is_fraction,
    "dparams": is_count,
    "dparams_by_kind": _is_count_table,
    "layers": _is_list_of_objects,
    "modules": _is_list_of_objects,
    "banks": _is_list_of_objects,
    "masks": lambda value: isinstance(value, list),
    "tensor_layout": lambda value: isinstance(value, list),
    "checksum": is_text,
}

MODULE_FIELDS: dict[str, Check] = {
    "path": is_text,
    "attributes": is_object,
    "tensors": is_object,
    "none": is_text_list,
    "folded_norm": is_flag,
    "narrowed": is_object,
}


def check_document(bundle: Bundle) -> None:
    """Check every top-level field of the bundle's metadata for its type and range.

    Raises:
        BundleError: for an unknown, missing or ill-typed field.
    """
    sections = {name: _is_list_of_objects for name in codec_sections()}  # shared codec records
    fields = {**DOCUMENT_FIELDS, **sections}
    check_fields(bundle, bundle.metadata, "metadata", fields, fields)


def trained_groups(metadata: dict[str, Any]) -> tuple[set[str], list[str]]:
    """The declared trainable groups ("norm", "head", "bias", "all") and head module names."""
    adapter = metadata.get("adapter")
    if not adapter:
        return set(), []
    return set(adapter["config"].get("trainable", [])), list(adapter["head"])


def _has_parameters(module: nn.Module) -> bool:
    return any(p is not None for p in module._parameters.values())


def needed_modules(
    base_model: nn.Module, groups: set[str], head: list[str], layer_paths: Iterable[str]
) -> list[str]:
    """Modules of `base_model` whose trained values a bundle of this declared method records.

    With "all" every module with parameters trains; with "norm" every normalisation layer with
    affine parameters; with "head" every module (with parameters) in the task head; with "bias"
    every module with a bias. Adapted layers (`layer_paths`) have their own entries.

    Returns:
        Module paths, in the base model's order.
    """
    layers = set(layer_paths)
    needed = []
    for name, module in base_model.named_modules():
        if name in layers or not _has_parameters(module):
            continue
        in_head = any(name == h or name.startswith(h + ".") for h in head)
        if (
            "all" in groups
            or ("norm" in groups and is_norm(module))
            or ("head" in groups and in_head)
            or ("bias" in groups and module._parameters.get("bias") is not None)
        ):
            needed.append(name)
    return needed
