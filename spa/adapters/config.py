"""What every adapter config shares: layer selection, trainable groups and their checks.

Each adapter kind defines its own frozen config dataclass in its package; `spa.adapt` unpacks it
through the kind's layer factory.
"""

from __future__ import annotations

from typing import Literal, Protocol

from spa.errors import ConfigError

# Parameter groups, besides adapters, that stay trainable after `adapt`.
TrainableGroup = Literal["norm", "head", "bias", "all"]
TRAINABLE_GROUPS = ("norm", "head", "bias", "all")
ModuleSelection = str | list[str] | tuple[str, ...] | None


def _check_selection(field: str, value: ModuleSelection) -> None:
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f"{field} must be a regex string, a list of name suffixes or None, got {value!r}"
        )


def _check_trainable(value: tuple[str, ...]) -> None:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(f"trainable must be a tuple of group names, got {value!r}")
    unknown = [v for v in value if v not in TRAINABLE_GROUPS]
    if unknown:
        raise ConfigError(
            f"trainable has unknown group(s) {unknown}; allowed: {', '.join(TRAINABLE_GROUPS)}"
        )


def check_common(config) -> None:
    """Validate the selection and trainable fields every adapter config has.

    Raises:
        ConfigError: naming the field and the offending value.
    """
    _check_selection("target_modules", config.target_modules)
    _check_selection("exclude_modules", config.exclude_modules)
    _check_selection("head_modules", config.head_modules)
    _check_trainable(config.trainable)


def check_positive(field: str, value: float, kind: type = int) -> None:
    """Raise `ConfigError` unless `value` is > 0 (and an integer when `kind` is int)."""
    if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(f"{field} must be an integer > 0, got {value!r}")
    if not value > 0:
        raise ConfigError(f"{field} must be > 0, got {value!r}")


class AdapterConfig(Protocol):
    """The fields `spa.adapt` reads from every kind's config."""

    target_modules: ModuleSelection
    exclude_modules: ModuleSelection
    trainable: tuple[str, ...]
    head_modules: ModuleSelection
