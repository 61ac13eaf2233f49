"""The `transformers` config values of a compacted model of a described family.

A `transformers` config holds one number of attention heads, of key/value heads and of FFN
neurons for all layers (the attributes a `Family` names in `config_heads`, `config_kv_heads`
and `config_intermediate`). Some families read the head dimension from the config
(`Family.config_head_dim`); the others derive it as hidden size / heads, so their configs
cannot describe removed heads at all. `config_values` reads the per-layer counts from the
weights and returns the config values, or refuses in one line saying which layer differs and
which pruning option gives an exportable model (`spa.tasks.save_pretrained` writes the model).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from spa.errors import ConfigError
from spa.families.description import Family
from spa.families.layouts import block_layouts
from spa.families.rows import module_rows
from spa.families.sync import head_counts

# (quantity of `head_counts`, the Family field naming its config attribute, words for messages)
_QUANTITIES = (
    ("heads", "config_heads", "attention heads"),
    ("kv_heads", "config_kv_heads", "key/value heads"),
    ("neurons", "config_intermediate", "FFN neurons"),
)
UNIFORM_OPTION = (
    "prune with ranking='local' (compute_masks / ChannelPruningConfig: every layer keeps the "
    "same number of heads and of FFN neurons)"
)


def config_values(model: nn.Module, family: Family, config: Any) -> dict[str, int]:
    """The config attributes, and their values, that describe `model`'s per-layer shapes.

    Args:
        model: a compacted model of `family` (plain or adapted).
        family: its description.
        config: the model's original `transformers` config (read, not changed).

    Returns:
        Config attribute name -> value: heads, key/value heads (GQA families), FFN width and,
        where the family reads it from the config, the head dimension.

    Raises:
        ConfigError: if the layers keep different numbers of heads or neurons, or heads were
            removed in a family whose config derives the head dimension (the message names
            the layers, the config attribute and the option to prune with instead).
    """
    config_class = type(config).__name__
    per_stage = [
        getattr(family, field)
        for _, field, _ in _QUANTITIES
        if isinstance(getattr(config, getattr(family, field) or "", None), list | tuple)
    ]
    if per_stage:
        raise ConfigError(
            f"transformers' {config_class} holds {per_stage[0]} as a list per stage, which "
            f"spa.save_pretrained does not write yet: export a {family.name} model with "
            "`spa export --format safetensors` (spa's own format) instead"
        )
    layouts = block_layouts(model, family)
    counts = [head_counts(model, layout) for layout in layouts]
    values: dict[str, int] = {}
    for quantity, field, words in _QUANTITIES:
        key = getattr(family, field)
        first = counts[0][quantity]
        for layout, count in zip(layouts, counts):
            if count[quantity] != first:
                raise ConfigError(
                    f"{layout.path} keeps {count[quantity]} {words}, {layouts[0].path} keeps "
                    f"{first}; transformers' {config_class} has one {key or words} for every "
                    f"layer: {UNIFORM_OPTION} to export it"
                )
        if key is not None:
            values[key] = first
    kept = {"attention heads": (counts[0]["heads"], getattr(config, family.config_heads, None))}
    if family.stream is not None:  # the hidden size: what the first block's attention writes
        hidden = module_rows(model)(layouts[0].output)
        values[family.config_hidden] = hidden
        kept["hidden channels"] = (hidden, getattr(config, family.config_hidden, None))
    if family.config_head_dim is not None:
        values[family.config_head_dim] = layouts[0].head_dim
        return values
    for words, (count, before) in kept.items():
        if count != before:
            raise ConfigError(
                f"the model keeps {count} of {before} {words}, but transformers' {config_class} "
                f"derives the head size from {family.config_hidden} / {family.config_heads}, so "
                f"it cannot describe that: prune FFN neurons only (units=('ffn',)) to export a "
                f"{family.name} model"
            )
    return values
