"""Typed, range-checked fields of bundle records (JSON from a possibly hostile sender).

A JSON `true` is not a count and `"4"` is not a rank: every field of a metadata document or a
layer entry is checked for its type and range, and unknown fields are refused. The layer codecs
of the adapter kinds (`spa.adapters.<kind>.codec`) and the metadata schema of `spa.tasks` both
use these checks, so they live below both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from spa.codec.protocols import StoredBundle
from spa.errors import BundleError

Check = Callable[[Any], bool]


def is_count(value: Any) -> bool:
    """A JSON integer >= 0 (booleans are not counts)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def is_positive(value: Any) -> bool:
    """A JSON integer > 0."""
    return is_count(value) and value > 0


def is_flag(value: Any) -> bool:
    """A JSON boolean."""
    return isinstance(value, bool)


def is_text(value: Any) -> bool:
    """A JSON string."""
    return isinstance(value, str)


def is_object(value: Any) -> bool:
    """A JSON object."""
    return isinstance(value, dict)


def is_text_list(value: Any) -> bool:
    """A JSON list of distinct strings."""
    return isinstance(value, list) and all(map(is_text, value)) and len(set(value)) == len(value)


def is_shape(length: int | None = None, minimum: int = 1) -> Check:
    """A check for a list of positive integers (of `length` entries, or at least `minimum`)."""

    def check(value: Any) -> bool:
        if not (isinstance(value, list) and all(map(is_positive, value))):
            return False
        return len(value) == length if length is not None else minimum <= len(value) <= 8

    return check


def one_of(*choices: Any) -> Check:
    """A check for one of `choices` (compared with their JSON type, so `True` is not `1`)."""
    return lambda value: any(type(value) is type(c) and value == c for c in choices)


def optional(check: Check) -> Check:
    """`check`, or None."""
    return lambda value: value is None or check(value)


def check_fields(
    bundle: StoredBundle,
    record: dict[str, Any],
    where: str,
    fields: dict[str, Check],
    required: Iterable[str],
) -> None:
    """Refuse unknown or missing fields of `record` and values that fail their check.

    Raises:
        BundleError: naming `where`, the field and its value.
    """
    source = bundle.path or "bundle"
    unknown = sorted(set(record) - set(fields))
    if unknown:
        raise BundleError(f"{source}: {where}: unknown field(s) {unknown}; damaged or altered")
    missing = sorted(set(required) - set(record))
    if missing:
        raise BundleError(f"{source}: {where}: missing field(s) {missing}; damaged or altered")
    for key, value in record.items():
        if not fields[key](value):
            raise BundleError(f"{source}: {where}: field {key!r} has an invalid value {value!r}")
