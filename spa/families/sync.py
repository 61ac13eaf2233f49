"""Per-block head and neuron counts read from the weights, and the attributes that hold them.

After `spa.pruning.compact` removes heads or FFN neurons, modules still hold the counts they
were built with (e.g. BERT's `num_attention_heads` / `all_head_size`, GPT-2's `split_size`).
`sync_attributes` rewrites the attributes a family description names from the current weight
shapes, so the compacted model runs and generates (per-layer counts may differ). Where a
module reads a count from the shared `transformers` config (Phi-3), it gets its own copy of
the config holding its block's counts, so the layers (and the base model) stay independent.
"""

from __future__ import annotations

import copy

from torch import nn

from spa.errors import ConfigError
from spa.families.description import Family
from spa.families.layouts import BlockLayout, block_layouts
from spa.families.match import describe
from spa.families.rows import ffn_neurons, head_rows, module_rows


def check_head_counts(model: nn.Module, family: Family, layouts: list[BlockLayout]) -> None:
    """The heads the projections' rows divide into must be each attention module's own head
    count where it keeps one (checked before any mask, and before an export). A fused
    projection of other proportions (GPTBigCode's multi-query `c_attn`, `[q | k | v]` with one
    key/value head, under GPT-2's layout) divides into whole heads of the wrong count, and
    would fail only at compaction.

    Raises:
        ConfigError: naming the attribute, its value and the count the rows give.
    """
    rows = module_rows(model)
    for layout in layouts:
        heads = head_rows(layout, rows).heads
        module = model.get_submodule(layout.attention)
        for attribute, quantity in family.attention.attributes.items():
            value = getattr(module, attribute, None)
            if quantity == "heads" and isinstance(value, int) and value != heads:
                raise ConfigError(
                    f"{layout.attention}.{attribute} is {value}, but its projections' rows give "
                    f"{heads} heads of {layout.head_dim} rows under model family "
                    f"{family.name!r}: its heads cannot be pruned or exported; prune "
                    "units=('ffn',) or ('ffn', 'hidden') and save it as a task bundle"
                )


def head_counts(model: nn.Module, layout: BlockLayout) -> dict[str, int]:
    """The quantities of one block, from its current weight shapes.

    Args:
        model: the model `layout` was resolved on.
        layout: from `block_layouts`.

    Returns:
        `heads`, `kv_heads`, `width` (heads x head_dim), `kv_groups` and `neurons`.

    Raises:
        ConfigError: if a projection's rows are not a whole number of heads or neurons.
    """
    rows = module_rows(model)
    heads = head_rows(layout, rows)
    return {
        "heads": heads.heads,
        "kv_heads": heads.kv_heads,
        "width": heads.width,
        "kv_groups": heads.groups,
        "neurons": ffn_neurons(layout, rows),
        "hidden": rows(layout.output),
    }


def sync_attributes(model: nn.Module, family: Family | None = None) -> list[str]:
    """Set every described count attribute of every block from the current weight shapes.

    A no-op for models of no described family. Attributes a module does not have are skipped
    (a description may name the union of its variants' attributes).

    Args:
        model: a (possibly compacted) model.
        family: its description; None finds it with `describe`.

    Returns:
        The `path.attribute` names whose value changed (`path.config.attribute` for config
        values).
    """
    family = family or describe(model)
    if family is None:
        return []
    changed = []
    for layout in block_layouts(model, family):
        counts = head_counts(model, layout)
        for holder, attributes in (
            (layout.attention, family.attention.attributes),
            (layout.ffn, family.ffn.attributes),
            *((f"{layout.path}.{p}", a) for p, a in family.block_attributes.items()),
        ):
            module = model.get_submodule(holder)
            for attribute, quantity in attributes.items():
                if hasattr(module, attribute) and getattr(module, attribute) != counts[quantity]:
                    setattr(module, attribute, counts[quantity])
                    changed.append(f"{holder}.{attribute}")
        module = model.get_submodule(layout.attention)
        for attribute, quantity in family.attention.config_attributes.items():
            if getattr(module.config, attribute) != counts[quantity]:
                module.config = copy.copy(module.config)  # never change the shared config
                setattr(module.config, attribute, counts[quantity])
                changed.append(f"{layout.attention}.config.{attribute}")
    return changed
