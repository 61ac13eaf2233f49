"""Which family a model is of, found by its structure (issue 21), not by its `model_type`.

A family fits a model when (`mismatches` lists what does not):
- the model carries a `transformers` config with the family's head-count fields;
- its block pattern finds blocks, and every described projection, norm and per-head tensor
  exists in every block, with a head dimension and whole heads and neurons in the shapes;
- every module with parameters (or a norm without any) inside a block is described (a
  projection, an FFN layer, a block norm, a per-head or joint norm or tensor): a block with
  anything else (a router, norms the description does not name) is not of the family, since
  pruning would not know how to slice it.

`describe` returns the one fitting family; where a family and its variants fit, the most
specific variant wins; where unrelated families fit, it refuses naming them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import nn

from spa.adapters.modules import is_weightless_norm
from spa.errors import ConfigError
from spa.families.description import FAMILIES, Family
from spa.families.layouts import block_layouts, config_of, ffn_layouts, join_path
from spa.families.rows import ffn_neurons, head_rows, module_rows


def mismatches(
    model: nn.Module, family: Family, modules: Mapping[str, nn.Module] | None = None
) -> list[str]:
    """Why `model` is not of `family`: empty when it fits.

    Args:
        model: a `transformers` model, possibly wrapped, adapted, masked or compacted.
        family: a description.
        modules: `dict(model.named_modules())`, where the caller has it already.

    Returns:
        One line per reason, naming the config field or module paths that do not fit.
    """
    config = config_of(model)
    if config is None:
        return ["the model has no transformers config"]
    modules = dict(model.named_modules()) if modules is None else modules
    try:
        layouts = block_layouts(model, family, modules)
        rows = module_rows(model)
        for layout in layouts:
            head_rows(layout, rows)
            for ffn in ffn_layouts(layout):
                ffn_neurons(ffn, rows)
    except (ConfigError, AttributeError) as error:
        return [str(error)]
    norms = family.stream.block_norms if family.stream else ()
    absent = [norm for norm in norms if any(f"{b.path}.{norm}" not in modules for b in layouts)]
    if absent:
        return [f"its blocks have no norm {', '.join(absent)}"]
    fields = [family.config_heads, family.config_kv_heads]
    missing = [name for name in fields if name is not None and not hasattr(config, name)]
    if missing:
        return [f"its {type(config).__name__} has no {', '.join(missing)}"]
    extra = _undescribed(model, family, [layout.path for layout in layouts])
    if extra:
        return [f"modules with parameters in its blocks are not described: {', '.join(extra)}"]
    return []


def _undescribed(model: nn.Module, family: Family, blocks: list[str]) -> list[str]:
    """Block-relative paths of modules owning parameters that the description does not name."""
    attention, ffn = family.attention, family.ffn
    named = [
        attention.query,
        attention.key,
        attention.value,
        attention.qkv,
        attention.output,
        *attention.head_norms,
        *(
            path.rpartition(".")[0]
            for path in (*attention.per_head, *attention.per_kv_head, *attention.optional_per_head)
        ),
        *attention.joint_norms,
        *(
            path
            for part in (ffn, *family.extra_ffns)
            for path in (
                (part.module,) if part.experts else (*part.inputs, part.output)  # every expert
            )
        ),
        *family.untouched,
        *(family.stream.block_norms if family.stream else ()),
        *(family.stream.optional_block_norms if family.stream else ()),
    ]
    named = [path for path in named if path is not None]
    stream = family.stream.tensors if family.stream else {}
    found: list[str] = []
    for block in blocks:
        for relative, module in model.get_submodule(block).named_modules():
            own = [
                join_path(join_path(block, relative), n)
                for n, _ in module.named_parameters(recurse=False)
            ]
            weightless = is_weightless_norm(module)  # a norm all the same (OLMo's)
            if not weightless and all(any(re.search(p, path) for p in stream) for path in own):
                continue  # no parameters, or only stream tensors (BEiT's layer scales)
            if any(relative == p or relative.startswith(f"{p}.") for p in named):
                continue
            if relative not in found:
                found.append(relative or "(the block's own parameters)")
    return found


def _ancestors(family: Family) -> set[str]:
    names, parent = set(), family.variant_of
    while parent is not None and parent not in names:
        names.add(parent)
        parent = FAMILIES.get(parent).variant_of
    return names


def describe(model: nn.Module) -> Family | None:
    """The registered family whose structure `model` has, or None if none fits.

    Args:
        model: a `transformers` model, possibly wrapped or adapted.

    Returns:
        The family (the most specific variant where a family and its variants fit), or None.

    Raises:
        ConfigError: if unrelated families fit (naming them).
    """
    if config_of(model) is None:
        return None
    modules = dict(model.named_modules())
    fitting = [FAMILIES.get(name) for name in FAMILIES]
    fitting = [family for family in fitting if not mismatches(model, family, modules)]
    refined = set().union(*(_ancestors(family) for family in fitting))
    fitting = [family for family in fitting if family.name not in refined]
    if len(fitting) > 1:
        names = ", ".join(repr(family.name) for family in fitting)
        raise ConfigError(
            f"the model fits the unrelated families {names}; declare one a variant of the "
            "other (Family.variant_of) or make their descriptions differ"
        )
    return fitting[0] if fitting else None


def explain(model: nn.Module) -> str:
    """Why no registered family fits `model`: per family, what did not fit (one line each)."""
    lines = [
        f"{name}: {'; '.join(reasons)}"
        for name in FAMILIES
        if (reasons := mismatches(model, FAMILIES.get(name)))
    ]
    return "\n".join(lines) or "a registered family fits"


def per_head_axes(model: nn.Module) -> dict[str, int]:
    """Every described per-head tensor of `model` (full dotted path -> head axis).

    Empty for a model of no described family or a family without per-head tensors.
    """
    family = describe(model)
    attention = family.attention if family is not None else None
    if attention is None or not (
        attention.per_head or attention.per_kv_head or attention.optional_per_head
    ):
        return {}
    return {
        path: axis
        for layout in block_layouts(model, family)
        for path, axis in (*layout.per_head, *layout.per_kv_head)
    }
