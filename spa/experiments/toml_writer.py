"""A minimal TOML writer for plain nested data (tomllib only reads)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any


def _value(value: Any, path: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v, path) for v in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(f"{_key(k)} = {_value(v, path)}" for k, v in value.items())
        return "{" + items + "}"
    raise TypeError(f"{path}: cannot write {type(value).__name__} {value!r} as TOML")


def _key(key: str) -> str:
    bare = key and all(c.isalnum() or c in "-_" for c in key)
    return key if bare else json.dumps(key)


def dumps_toml(data: Mapping[str, Any]) -> str:
    """Serialise nested plain data (str, int, float, bool, lists, tables; no None) to TOML.

    Args:
        data: top-level mapping; nested mappings become `[tables]` (and sub-tables).

    Returns:
        TOML text that `tomllib.loads` reads back to equal data (tuples become lists).

    Raises:
        TypeError: for a value TOML cannot hold (e.g. None), naming its key.
    """
    lines: list[str] = []
    _table(data, [], lines)
    return "\n".join(lines).strip() + "\n"


def _table(data: Mapping[str, Any], prefix: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in data.items() if not isinstance(v, Mapping)}
    tables = {k: v for k, v in data.items() if isinstance(v, Mapping)}
    if prefix and (scalars or not tables):
        lines.append("")
        lines.append("[" + ".".join(_key(p) for p in prefix) + "]")
    for key, value in scalars.items():
        lines.append(f"{_key(key)} = {_value(value, '.'.join(prefix + [key]))}")
    for key, value in tables.items():
        _table(value, prefix + [key], lines)
