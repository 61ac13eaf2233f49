"""The `[adapter]` table of an experiment config: `kind` plus that kind's own config fields.

`kind` names a registered adapter kind (`spa.adapters.ADAPTER_KINDS`) or a preset
(`spa.experiments.presets.ADAPTER_PRESETS`, e.g. "lora"); the other keys are parsed straight
into the kind's config class, so a newly registered kind runs with no edit here. The runner
sets the config's `head_modules` from `model.head`, so that field is not given here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spa.errors import ConfigError
from spa.experiments._typecheck import build_section
from spa.experiments._typecheck import config_key_error as _fail
from spa.experiments.presets import DEFAULT_KIND, pruning_of, resolve_kind

# Fields of a kind's config that the runner sets, not the [adapter] table.
RUNNER_FIELDS = ("head_modules",)


def _table_fields(config_type: type) -> list[str]:
    return [f.name for f in dataclasses.fields(config_type) if f.name not in RUNNER_FIELDS]


@dataclass(frozen=True)
class AdapterSection:
    """The adapter kind of a run and the kind's own settings.

    Args:
        kind: a registered adapter kind or a preset name.
        config: the kind's config (its defaults if omitted); `head_modules` is set by the
            runner from `model.head`.
    """

    kind: str = DEFAULT_KIND
    config: Any = None

    def __post_init__(self) -> None:
        config_type = resolve_kind(self.kind)[0].config_type
        if self.config is None:
            object.__setattr__(self, "config", config_type())
        elif type(self.config) is not config_type:
            raise _fail(
                "adapter",
                f"kind {self.kind!r} takes a {config_type.__name__}, "
                f"got a {type(self.config).__name__}",
            )

    @property
    def pruning(self) -> str:
        """What runs of this section prune: "channel", "block" or "none"."""
        return pruning_of(self.kind)

    def label(self) -> str:
        """Table label of the run's learning method, e.g. "SPLoRA r8" or "LoRA r8"."""
        kind, preset = resolve_kind(self.kind)
        if preset is None:
            return kind.table_label(self.config)
        return dataclasses.replace(kind, label=preset.label).table_label(self.config)

    @classmethod
    def from_table(cls, table: Mapping[str, Any], path: str = "adapter") -> AdapterSection:
        """Parse an `[adapter]` table: `kind` and the kind's fields.

        Raises:
            ConfigError: for an unknown kind, a key the kind does not have (listing its
                fields) or a bad value, naming the full dotted key.
        """
        if not isinstance(table, Mapping):
            raise _fail(path, f"must be a table, got {table!r}")
        name = table.get("kind", DEFAULT_KIND)
        if not isinstance(name, str):
            raise _fail(f"{path}.kind", f"must be a string, got {name!r}")
        config_type = resolve_kind(name)[0].config_type
        allowed = _table_fields(config_type)
        values = {key: value for key, value in table.items() if key != "kind"}
        for key in values:
            if key not in allowed:
                raise _fail(
                    f"{path}.{key}",
                    f"unknown for adapter.kind = {name!r}; its fields: {', '.join(allowed)}",
                )
        try:
            config = build_section(config_type, values, path)
        except ConfigError as error:
            message = str(error)
            if message.startswith("config key "):
                raise
            key = next((f for f in allowed if message.startswith(f)), None)
            raise _fail(f"{path}.{key}" if key else path, message) from None
        return cls(kind=name, config=config)

    def to_table(self) -> dict[str, Any]:
        """The section as plain data: `kind` and the config's fields (None values left out)."""
        values = {name: getattr(self.config, name) for name in _table_fields(type(self.config))}
        return {"kind": self.kind, **{k: v for k, v in values.items() if v is not None}}
