"""`ADAPTER_KINDS`: every adapter kind as one record, registered once by its own package."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Literal

from torch import nn

from spa._registry import Registry
from spa.codec.protocols import LayerCodec
from spa.errors import ConfigError

# (module, config, dotted name, context shared by one `adapt` call) -> adapter layer.
LayerFactory = Callable[[nn.Module, Any, str, dict], nn.Module]
# What masks a kind's layers carry, hence which criteria can prune them.
PruningKind = Literal["channel", "block", "none"]
PRUNING_KINDS = ("channel", "block", "none")


@dataclass(frozen=True)
class AdapterKind:
    """What spa needs to know about one adapter kind.

    Which parameters train besides the adapter is the config's own `trainable` field (its
    default is the kind's rule: "norm" and "head" for adapters, "all" for fine-pruning).

    Attributes:
        name: registry name; adapter layers of the kind carry it as `layer.kind` and bundle
            entries record it.
        config_type: the frozen config dataclass `spa.adapt` dispatches on.
        layer_types: base layer types the kind wraps (others are skipped with a reason).
        make_layer: builds the adapter layer for one base module (raise a `SpaError` to skip
            it: `adapt` records the reason, or re-raises for explicitly targeted layers).
        codec: the kind's own bundle codec (`spa.codec.LayerCodec`, in its package); None
            uses the generic codec built from `layer_options` and `from_bundle`.
        layer_options: the layer's construction options as JSON values, for bundles; None if
            the kind has its own bundle codec.
        from_bundle: `(base, options, name) -> layer` rebuilding an (untrained) layer of the
            kind from `layer_options`; the generic bundle codec then loads its tensors.
        pruning: what its layers are pruned by: "channel" (channel criteria, `ChannelMasked`
            layers), "block" (block criteria, `BlockMasked` layers) or "none".
        label: table label of a run, a `str.format` template over the config's fields (e.g.
            "SPLoRA r{rank}"); the kind's name if omitted.
        layer_rank: `(base module, config) -> rank` the config's `rank` asks of one layer,
            before `spa.adapters.rank_bounds` caps it at the layer's width (`make_layer` builds
            with `capped_rank`); None for kinds without a per-layer rank.
    """

    name: str
    config_type: type
    layer_types: tuple[type, ...]
    make_layer: LayerFactory
    codec: LayerCodec | None = None
    layer_options: Callable[[nn.Module], dict[str, Any]] | None = None
    from_bundle: Callable[[nn.Module, dict[str, Any], str], nn.Module] | None = None
    pruning: PruningKind = "channel"
    label: str | None = None
    layer_rank: Callable[[nn.Module, Any], int] | None = None

    def __post_init__(self) -> None:
        if self.pruning not in PRUNING_KINDS:
            raise ConfigError(
                f"adapter kind {self.name!r}: pruning must be one of {PRUNING_KINDS}, "
                f"got {self.pruning!r}"
            )

    def table_label(self, config: object) -> str:
        """The run's label in tables, e.g. "SPLoRA r8" (the `label` template filled from
        `config`'s fields)."""
        if self.label is None:
            return self.name
        return self.label.format(**{f.name: getattr(config, f.name) for f in fields(config)})


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
