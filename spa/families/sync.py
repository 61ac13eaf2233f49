"""Per-block head and neuron counts read from the weights, and the attributes that hold them.

After `spa.pruning.compact` removes heads or FFN neurons, modules still hold the counts they
were built with (e.g. BERT's `num_attention_heads` / `all_head_size`, GPT-2's `split_size`).
`sync_attributes` rewrites the attributes a family description names from the current weight
shapes, so the compacted model runs and generates (per-layer counts may differ).
"""

from __future__ import annotations

from torch import nn

from spa.adapters.transposed import out_features
from spa.errors import ConfigError
from spa.families.description import BlockLayout, Family, block_layouts, describe


def rows(module: nn.Module) -> int:
    """Output rows of a Linear (or Conv1D) or of an adapter layer's (possibly compacted) base."""
    return out_features(getattr(module, "base", module))


def head_counts(model: nn.Module, layout: BlockLayout) -> dict[str, int]:
    """The quantities of one block, from its current weight shapes.

    Args:
        model: the model `layout` was resolved on.
        layout: from `block_layouts`.

    Returns:
        `heads`, `kv_heads`, `width` (heads x head_dim), `kv_groups` and `neurons`.

    Raises:
        ConfigError: if a projection's rows are not a whole number of heads.
    """
    head_dim = layout.head_dim
    if layout.qkv is not None:
        fused = rows(model.get_submodule(layout.qkv))
        if fused % (3 * head_dim):
            raise ConfigError(f"{layout.qkv}: {fused} rows are not 3 x heads x {head_dim}")
        heads = kv_heads = fused // (3 * head_dim)
    else:
        query, key = rows(model.get_submodule(layout.query)), rows(model.get_submodule(layout.key))
        if query % head_dim or key % head_dim or (query // head_dim) % max(key // head_dim, 1):
            raise ConfigError(
                f"block {layout.path}: query rows {query} and key rows {key} are not whole "
                f"heads of {head_dim} with the same number of query heads per key/value head"
            )
        heads, kv_heads = query // head_dim, key // head_dim
    return {
        "heads": heads,
        "kv_heads": kv_heads,
        "width": heads * head_dim,
        "kv_groups": heads // max(kv_heads, 1),
        "neurons": rows(model.get_submodule(layout.ffn_inputs[0])),
    }


def sync_attributes(model: nn.Module, family: Family | None = None) -> list[str]:
    """Set every described count attribute of every block from the current weight shapes.

    A no-op for models of no described family.

    Args:
        model: a (possibly compacted) model.
        family: its description; None finds it with `describe`.

    Returns:
        The `path.attribute` names whose value changed.
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
        ):
            module = model.get_submodule(holder)
            for attribute, quantity in attributes.items():
                if getattr(module, attribute, None) != counts[quantity]:
                    setattr(module, attribute, counts[quantity])
                    changed.append(f"{holder}.{attribute}")
    return changed
