"""`ADAPTER_KINDS`: every adapter kind as one record, registered once by its own package."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from spa._registry import Registry
from spa.errors import ConfigError

# (module, config, dotted name, context shared by one `adapt` call) -> adapter layer.
LayerFactory = Callable[[nn.Module, Any, str, dict], nn.Module]


@dataclass(frozen=True)
class AdapterKind:
    """What spa needs to know about one adapter kind.

    Attributes:
        name: registry name; adapter layers of the kind carry it as `layer.kind` and bundle
            entries record it.
        config_type: the frozen config dataclass `spa.adapt` dispatches on.
        layer_types: base layer types the kind wraps (others are skipped with a reason).
        make_layer: builds the adapter layer for one base module (raise a `SpaError` to skip
            it: `adapt` records the reason, or re-raises for explicitly targeted layers).
        layer_options: the layer's construction options as JSON values, for bundles; None if
            the kind has its own bundle codec.
        from_bundle: `(base, options, name) -> layer` rebuilding an (untrained) layer of the
            kind from `layer_options`; the generic bundle codec then loads its tensors.
    """

    name: str
    config_type: type
    layer_types: tuple[type, ...]
    make_layer: LayerFactory
    layer_options: Callable[[nn.Module], dict[str, Any]] | None = None
    from_bundle: Callable[[nn.Module, dict[str, Any], str], nn.Module] | None = None


ADAPTER_KINDS: Registry[AdapterKind] = Registry("adapter kind")


def register_kind(kind: AdapterKind) -> AdapterKind:
    """Register `kind` under `kind.name` (duplicates raise).

    Returns:
        `kind`, so a package can keep a reference.
    """
    return ADAPTER_KINDS.register(kind.name)(kind)


def kind_for_config(config: object) -> AdapterKind:
    """The registered kind whose config type is `type(config)`.

    Raises:
        ConfigError: for an object no kind accepts; the message lists the config types.
    """
    for name in ADAPTER_KINDS:
        kind = ADAPTER_KINDS.get(name)
        if type(config) is kind.config_type:
            return kind
    known = ", ".join(ADAPTER_KINDS.get(n).config_type.__name__ for n in ADAPTER_KINDS)
    raise ConfigError(f"adapt: {type(config).__name__} is not an adapter config; known: {known}")
