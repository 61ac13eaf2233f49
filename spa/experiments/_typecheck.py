"""Build a frozen dataclass tree from plain nested data, checking every key and value type."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from spa.errors import ConfigError


def config_key_error(path: str, message: str) -> ConfigError:
    """A `ConfigError` that names the dotted config key at fault."""
    return ConfigError(f"config key {path!r}: {message}")


_fail = config_key_error


def _convert(value: Any, hint: Any, path: str) -> Any:
    """Check `value` against the type `hint` and convert lists to tuples where declared."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin is Literal:
        if value not in typing.get_args(hint):
            allowed = ", ".join(map(repr, typing.get_args(hint)))
            raise _fail(path, f"got {value!r}; allowed: {allowed}")
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _convert(value, option, path)
            except ConfigError:
                continue
        raise _fail(path, f"got {value!r} of type {type(value).__name__}, expected {hint}")
    if isinstance(hint, type) and hasattr(hint, "from_table"):  # a table with its own parser
        return hint.from_table(value, path)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise _fail(path, f"must be a table, got {value!r}")
        return _build(hint, value, path)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise _fail(path, f"must be a list, got {value!r}")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _fail(path, f"must have {len(args)} elements, got {list(value)!r}")
        return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise _fail(path, f"must be a list, got {value!r}")
        (item,) = typing.get_args(hint) or (Any,)
        return [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _fail(path, f"must be a table, got {value!r}")
        return dict(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(path, f"must be a number, got {value!r}")
        return float(value)
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise _fail(path, f"must be an integer, got {value!r}")
    if hint in (str, bool) and not isinstance(value, hint):
        raise _fail(path, f"must be a {hint.__name__}, got {value!r}")
    return value


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            raise _fail(where, f"unknown key; allowed keys here: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name in data:
            path = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _convert(data[name], hints[name], path)
    return cls(**kwargs)


def build_dataclass(cls: type, data: Mapping[str, Any], allowed_extra: Sequence[str] = ()) -> Any:
    """Instantiate dataclass `cls` from `data`, recursing into nested dataclass fields.

    Lists become tuples where the field is a tuple; ints are accepted for floats; `Literal`
    fields list their allowed values on a mismatch; the dataclasses' own `__post_init__` checks
    ranges.

    Args:
        cls: the (top-level) dataclass.
        data: nested plain data, e.g. parsed TOML.
        allowed_extra: top-level keys that are accepted and ignored (e.g. a version stamp).

    Returns:
        The instance.

    Raises:
        ConfigError: for an unknown key (named by its full dotted path) or a value of the
            wrong type.
    """
    extra = {key for key in data if key in allowed_extra}
    return _build(cls, {k: v for k, v in data.items() if k not in extra}, "")


def build_section(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    """Instantiate dataclass `cls` from the table at dotted key `prefix` (e.g. a task type's
    `data.options`), with the checks of `build_dataclass` and keys named under `prefix`.

    Raises:
        ConfigError: for an unknown key or a value of the wrong type (naming `prefix.key`).
    """
    return _build(cls, data, prefix)
