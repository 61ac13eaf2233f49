"""Limits on what a bundle header may hold, checked before any of it is parsed; strict JSON.

A bundle may come from a hostile sender, so parsing must cost little whatever the file says. The
header (the safetensors JSON holding spa's metadata document) is bounded in size, and each JSON
text in it (the header, then the metadata document, then the signature record) is scanned for
its nesting depth and number of values before `json.loads` sees it; the lists that size the work
of loading (tensor layout, adapted layers, masks, other modules) are bounded after parsing. A
bundle of the largest model spa handles (a few hundred adapted layers) uses well under a
hundredth of each limit.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy

from spa.errors import BundleError

MAX_HEADER_BYTES = 8 * 1024 * 1024
"""Bytes of the safetensors header, metadata document included."""
MAX_JSON_DEPTH = 32
"""Nesting of JSON arrays and objects."""
MAX_JSON_VALUES = 200_000
"""JSON values (numbers, strings, arrays, objects) in one JSON text."""
MAX_ENTRIES = 10_000
"""Entries of each list in the metadata document (`tensor_layout`, `layers`, `masks`, ...)."""

# Escapes first (so an escaped quote does not end a string), then strings: single-character
# repeats only, which `re` matches in linear time and constant memory.
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_STRING = re.compile(rb'"[^"]*"')
_STEPS = numpy.full(256, -1, dtype=numpy.int8)
_STEPS[[ord("["), ord("{")]] = 1
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def check_header_size(size: int, source: str) -> None:
    """Refuse a safetensors header larger than `MAX_HEADER_BYTES`.

    Raises:
        BundleError: naming the file, the size and the limit.
    """
    if size > MAX_HEADER_BYTES:
        raise BundleError(
            f"{source}: header of {size:,} bytes exceeds the limit of {MAX_HEADER_BYTES:,} "
            "bytes for a task bundle; refused before parsing"
        )


def check_json_text(text: bytes | str, source: str, what: str) -> None:
    """Refuse JSON text nested deeper than `MAX_JSON_DEPTH` or holding more than
    `MAX_JSON_VALUES` values, by a scan that never builds the document.

    Raises:
        BundleError: naming the file, the part of it (`what`) and the limit exceeded.
    """
    data = text.encode() if isinstance(text, str) else text
    bare = _STRING.sub(b'""', _ESCAPE.sub(b"", data))  # brackets, commas in strings do not count
    values = bare.count(b",") + bare.count(b"[") + bare.count(b"{") + 1
    if values > MAX_JSON_VALUES:
        raise BundleError(
            f"{source}: {what} holds over {MAX_JSON_VALUES:,} JSON values; refused before parsing"
        )
    if _depth_exceeds(bare.translate(None, _NOT_BRACKETS), MAX_JSON_DEPTH):
        raise BundleError(
            f"{source}: {what} is nested over {MAX_JSON_DEPTH} levels deep; refused before parsing"
        )


def _depth_exceeds(brackets: bytes, limit: int) -> bool:
    """Whether `brackets` (only `[]{}` left) nest deeper than `limit`: the running count of
    opened minus closed brackets, one pass in numpy (5 bytes per bracket)."""
    steps = _STEPS[numpy.frombuffer(brackets, dtype=numpy.uint8)]  # +1 opens, -1 closes
    return bool(steps.size) and int(steps.cumsum(dtype=numpy.int32).max()) > limit


def check_entries(document: dict[str, Any], source: str) -> None:
    """Refuse a metadata document with a list longer than `MAX_ENTRIES`.

    Raises:
        BundleError: naming the file, the field and the limit.
    """
    for key, value in document.items():
        if isinstance(value, list | dict) and len(value) > MAX_ENTRIES:
            raise BundleError(
                f"{source}: metadata field {key!r} has {len(value):,} entries, over the limit of "
                f"{MAX_ENTRIES:,}; refused before any tensor is read"
            )


def strict_json(text: str | bytes) -> Any:
    """`json.loads` that refuses duplicate object keys and non-finite numbers.

    A number too large for a float (`1e400`) is refused like the NaN and Infinity constants,
    instead of becoming `inf`.

    Raises:
        ValueError: for invalid JSON, a repeated key or a non-finite number.
    """

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = {}
        for key, value in pairs:
            if key in result:
                raise ValueError(f"duplicate key {key!r}")
            result[key] = value
        return result

    def constant(name: str) -> Any:
        raise ValueError(f"non-finite number {name}")

    def number(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"number {text[:20]} is out of range")
        return value

    return json.loads(text, object_pairs_hook=unique, parse_constant=constant, parse_float=number)
