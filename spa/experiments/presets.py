"""Adapter presets of `spa run` and the one mapping of the old `[adapter] method = ...` form.

A preset is a name usable as `adapter.kind` that stands for a registered adapter kind run in a
fixed way (LoRA: SPLoRA that is never pruned). Every other `adapter.kind` is a name in
`spa.adapters.ADAPTER_KINDS`. The registries import torch, so they are read lazily.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from spa._registry import Registry
from spa.experiments._typecheck import config_key_error as _fail

if TYPE_CHECKING:
    from spa.adapters import AdapterKind

# The kind of a config without an `adapter.kind`.
DEFAULT_KIND = "splora"


@dataclass(frozen=True)
class Preset:
    """A name for a registered adapter kind run in a fixed way.

    Args:
        kind: the registered adapter kind it runs.
        label: table label template over the kind's config fields (as `AdapterKind.label`).
        prunes: False if runs never prune (then `pruning.schedule` must be "none").
        summary: one line for the documentation.
    """

    kind: str
    label: str
    prunes: bool = True
    summary: str = ""


ADAPTER_PRESETS: Registry[Preset] = Registry("adapter preset")
ADAPTER_PRESETS.register("lora")(
    Preset(kind="splora", label="LoRA r{rank}", prunes=False, summary="SPLoRA never pruned")
)

# Old `adapter.method` values -> `adapter.kind`; "fine-pruning" became one kind per pruning.
_METHODS = {"splora": "splora", "lora": "lora", "splopa": "splopa"}
_FINE_PRUNING = {"channel": "fine_pruning", "block": "block_fine_pruning"}


def resolve_kind(name: str) -> tuple[AdapterKind, Preset | None]:
    """The registered kind `adapter.kind = name` runs, and its preset (None for a plain kind).

    Raises:
        ConfigError: for an unknown name, listing the kinds and presets.
    """
    from spa.adapters import ADAPTER_KINDS

    if name in ADAPTER_PRESETS:
        preset = ADAPTER_PRESETS.get(name)
        return ADAPTER_KINDS.get(preset.kind), preset
    if name in ADAPTER_KINDS:
        return ADAPTER_KINDS.get(name), None
    raise _fail(
        "adapter.kind",
        f"unknown {name!r}; kinds: {', '.join(ADAPTER_KINDS.names())}; "
        f"presets: {', '.join(ADAPTER_PRESETS.names())}",
    )


def pruning_of(name: str) -> str:
    """What a run of `adapter.kind = name` prunes: "channel", "block" or "none"."""
    kind, preset = resolve_kind(name)
    return "none" if preset is not None and not preset.prunes else kind.pruning


def kinds_pruning(pruning: tuple[str, ...]) -> list[str]:
    """The kind and preset names whose runs prune by one of `pruning` (sorted)."""
    from spa.adapters import ADAPTER_KINDS

    names = [*ADAPTER_KINDS.names(), *ADAPTER_PRESETS.names()]
    return sorted(name for name in names if pruning_of(name) in pruning)


def upgrade_method(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """`data` with an old `[adapter] method = ...` table rewritten as `kind = ...`.

    The old table carried every method's fields; those the kind does not have are dropped
    (they had no effect). Old "fine-pruning" becomes "block_fine_pruning" with a block
    criterion and "fine_pruning" otherwise.

    Raises:
        ConfigError: for an unknown method, or a table with both `method` and `kind`.
    """
    table = data.get("adapter")
    if not isinstance(table, Mapping) or "method" not in table:
        return data
    if "kind" in table:
        raise _fail("adapter.method", "is the old name of adapter.kind; give only adapter.kind")
    method = table["method"]
    if method == "fine-pruning":
        kind = _FINE_PRUNING[_criterion_pruning(data)]
    elif method in _METHODS:
        kind = _METHODS[method]
    else:
        known = ", ".join(map(repr, ["fine-pruning", *_METHODS]))
        raise _fail("adapter.method", f"got {method!r}; allowed: {known} (or use adapter.kind)")
    config_fields = {f.name for f in fields(resolve_kind(kind)[0].config_type)}
    kept = {key: value for key, value in table.items() if key in config_fields}
    return {**data, "adapter": {"kind": kind, **kept}}


def _criterion_pruning(data: Mapping[str, Any]) -> str:
    from spa.experiments.criteria_names import block_criteria

    pruning = data.get("pruning")
    criterion = pruning.get("criterion") if isinstance(pruning, Mapping) else None
    return "block" if criterion in block_criteria() else "channel"


__all__ = [
    "ADAPTER_PRESETS",
    "DEFAULT_KIND",
    "Preset",
    "kinds_pruning",
    "pruning_of",
    "resolve_kind",
    "upgrade_method",
]
