"""The `transformers` config values of a compacted model of a described family.

A `transformers` config holds one number of attention heads, of key/value heads and of FFN
neurons for all layers (the attributes a `Family` names in `config_heads`, `config_kv_heads`
and `config_intermediate`). Some families read the head dimension from the config
(`Family.config_head_dim`); the others derive it as hidden size / heads, so their configs
describe removed heads only together with a hidden size of exactly heads x head_dim (prune
both with `ranking="local"` and `round_to=pretrained_round_to(model)`). Experts of a mixture
of experts may keep different widths: the config holds the widest, and `spa.save_pretrained`
pads the others with zero neurons. `config_values` reads the per-layer counts from the weights
and returns the config values, or refuses in one line saying which layer differs and which
pruning option gives an exportable model (`spa.tasks.save_pretrained` writes the model).
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from spa.errors import ConfigError
from spa.families.description import Family
from spa.families.layouts import BlockLayout, block_layouts, ffn_layouts, join_path
from spa.families.match import describe
from spa.families.rows import ffn_neurons, head_rows, module_rows
from spa.families.sync import check_head_counts, head_counts

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


def pretrained_round_to(model: nn.Module, family: Family | None = None) -> dict[str, int]:
    """The `round_to` that, with `ranking="local"`, keeps the hidden size `heads x head_dim`.

    Local ranking removes the same fraction of every group; rounding the hidden size to the
    channels of one heads-group channel (a key/value head with its query heads: hidden / kv
    heads) then keeps exactly `kept heads x head_dim` hidden channels, the only hidden size a
    config that derives the head dimension as hidden / heads describes.

    Args:
        model: an unpruned model of a described family (plain or adapted, possibly wrapped).
        family: its description; None finds it (`spa.families.describe`).

    Returns:
        `{"hidden": n}` where the hidden size can be pruned and is heads x head_dim (else
        `{}`: a config that can describe the model reads its head size itself); pass it to
        `compute_masks(..., ranking="local", round_to=...)` or `ChannelPruningConfig`.

    Raises:
        ConfigError: if the model is of no described family.
    """
    family = family or describe(model)
    if family is None:
        raise ConfigError(
            f"pretrained_round_to: {type(model).__name__} is of no described model family "
            "(spa.families.explain(model) says what did not fit)"
        )
    if family.stream is None:
        return {}
    layout = block_layouts(model, family)[0]
    rows = module_rows(model)
    heads, hidden = head_rows(layout, rows), rows(layout.output)
    if heads.width != hidden:  # the head size is not hidden / heads: nothing to keep equal
        return {}
    return {"hidden": hidden // heads.kv_heads}


def config_values(model: nn.Module, family: Family, config: Any) -> dict[str, int]:
    """The config attributes, and their values, that describe `model`'s per-layer shapes.

    Args:
        model: a compacted model of `family` (plain or adapted).
        family: its description.
        config: the model's original `transformers` config (read, not changed).

    Returns:
        Config attribute name -> value: heads, key/value heads (GQA families), FFN widths (the
        widest expert for experts), the hidden size and, where the family reads it from the
        config, the head dimension.

    Raises:
        ConfigError: if the layers keep different numbers of heads or neurons, the config has
            no attribute for a pruned width, or heads were removed in a family whose config
            derives the head dimension without the matching hidden size (the message names the
            layers, the config attribute and the option to prune with instead).
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
    check_head_counts(model, family, layouts)
    counts = [head_counts(model, layout) for layout in layouts]
    values: dict[str, int] = {}
    for quantity, field, words in _QUANTITIES:
        key = getattr(family, field)
        if quantity == "neurons" and family.ffn.experts is not None:
            values[key] = _expert_width(model, layouts)
            continue
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
    values.update(_extra_ffn_widths(model, family, layouts, config_class))
    hidden = module_rows(model)(layouts[0].output)  # what the first block's attention writes
    if family.stream is not None:
        before = getattr(config, family.config_hidden, None)
        _check_pooler(model, family, config_class, before, hidden)
        also = [key for key in family.config_hidden_also if getattr(config, key, None) == before]
        values.update(dict.fromkeys([family.config_hidden, *also], hidden))
    _check_head_size(family, config_class, layouts[0], counts[0]["heads"], hidden)
    if family.config_intermediate is None and counts[0]["neurons"] != 4 * hidden:
        raise ConfigError(
            f"{layouts[0].ffn} keeps {counts[0]['neurons']} FFN neurons, but transformers' "
            f"{config_class} has no FFN width (its model code uses 4 x {family.config_hidden} "
            f"= {4 * hidden}): {_options(family)}"
        )
    if family.config_head_dim is not None:
        values[family.config_head_dim] = layouts[0].head_dim
    return values


def _options(family: Family) -> str:
    """What of a `family` model a `transformers` config describes, for refusals."""
    options = ["FFN neurons pruned alone (units=('ffn',))"] if family.config_intermediate else []
    if family.config_head_dim is None and family.stream and not family.attention.fixed_heads:
        options.append(
            "heads and the hidden size pruned together with ranking='local' and "
            "round_to=spa.pretrained_round_to(model) (hidden = heads x head_dim)"
        )
    options.append("any prune as a task bundle (spa.save_task)")
    return f"a {family.name} model exports " + "; or ".join(options)


def _check_head_size(
    family: Family, config_class: str, layout: BlockLayout, heads: int, hidden: int
) -> None:
    """Refuse where the config derives the head size as hidden / heads and that is not the
    head size the model keeps."""
    if family.config_head_dim is not None or heads * layout.head_dim == hidden:
        return
    raise ConfigError(
        f"{layout.path} keeps {heads} attention heads of {layout.head_dim} channels and a "
        f"hidden size of {hidden}, but transformers' {config_class} derives the head size as "
        f"{family.config_hidden} / {family.config_heads}, so it cannot describe that: "
        f"{_options(family)}"
    )


def _check_pooler(
    model: nn.Module, family: Family, config_class: str, before: Any, hidden: int
) -> None:
    """Refuse a pruned hidden size where a pooler (BERT's, ModernBERT's head) writes the
    original width: the config gives the pooler hidden-size outputs too."""
    if hidden == before or family.stream is None or family.stream.pooler is None:
        return
    pattern = re.compile(family.stream.pooler)
    for name, module in model.named_modules():
        if pattern.search(name) and getattr(module, "out_features", None) == before:
            raise ConfigError(
                f"{name} writes {before} channels and reads the pruned hidden size {hidden}, "
                f"but transformers' {config_class} gives it {family.config_hidden} of both: "
                f"a {family.name} model with a pooler exports with its hidden size unpruned "
                "(units without 'hidden'), or as a task bundle (spa.save_task)"
            )


def _expert_width(model: nn.Module, layouts: list[BlockLayout]) -> int:
    """The widest expert of every block (the one width a config holds; the others are padded
    with zero neurons), rounded up to 16 bytes of weights: `transformers`' default grouped
    expert kernel (`torch.nn.functional.grouped_mm`) refuses other row strides."""
    rows = module_rows(model)
    widest = max(
        ffn_neurons(ffn, rows)
        for layout in layouts
        for ffn in ffn_layouts(layout)
        if ffn.ffn == layout.ffn
    )
    weight = model.get_submodule(layouts[0].ffn_inputs[0]).weight
    step = max(1, 16 // weight.element_size())
    return -(-widest // step) * step


def _extra_ffn_widths(
    model: nn.Module, family: Family, layouts: list[BlockLayout], config_class: str
) -> dict[str, int]:
    """The config widths of a block's further FFNs (Qwen2-MoE's shared expert), for each
    description with a `config_width`; refuses layers that keep different widths."""
    rows = module_rows(model)
    values: dict[str, int] = {}
    for description in family.extra_ffns:
        key = description.config_width
        if key is None:
            continue
        widths = {
            join_path(layout.path, description.module): ffn_neurons(ffn, rows)
            for layout in layouts
            for ffn in ffn_layouts(layout)
            if ffn.ffn == join_path(layout.path, description.module)
        }
        if not widths:
            continue
        (first, width), *rest = widths.items()
        for path, other in rest:
            if other != width:
                raise ConfigError(
                    f"{path} keeps {other} FFN neurons, {first} keeps {width}; transformers' "
                    f"{config_class} has one {key} for every layer: {UNIFORM_OPTION} to export it"
                )
        values[key] = width
    return values
