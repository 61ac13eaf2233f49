"""Attention heads on the traced path: never cut inside a head (issue 21, item 4).

Torch-Pruning couples the channels of an attention block's query, key and value projections and
the output projection's columns one by one, so channel-level pruning would cut `head_dim`
inside heads and leave the model's own head reshape (`view(..., heads, head_dim)`) broken. For
a model of no described family, an *attention scope* is a module that knows its head count: an
integer attribute (`num_heads`, `num_attention_heads`, `n_heads`, `n_head`), or, for a module
whose class name says "Attention", the `transformers` config (`num_attention_heads`,
`num_key_value_heads`, `head_dim`). A traced group whose producers lie in a scope and whose
members all lie inside the scope's parent (the block: the output projection may sit next to the
scope, as BERT's `attention.output.dense`) is a *head group*: all rows of one key/value head and
of the query heads that read it become one group channel. A projection whose width is neither
`heads x head_dim` nor `kv_heads x head_dim` (a fused q/k/v, whose row layout is a family's
knowledge) leaves its group out with a warning naming it.

After compaction, `sync_head_counts` writes the new head counts into each scope's attributes
(and `all_head_size`-style widths), so models that reshape with their stored count (OPT, DeBERTa,
MobileViT) run; for the rest (`view(..., -1, head_dim)`) it changes nothing they read.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from torch import nn

from spa.adapters.protocols import ChannelMasked
from spa.families import config_of
from spa.pruning.channel_group import mask_size

HEAD_COUNTS = ("num_heads", "num_attention_heads", "n_heads", "n_head")
KV_COUNTS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "n_head_kv")
HEAD_DIMS = ("head_dim", "attention_head_size", "key_value_proj_dim", "head_size")
WIDTHS = ("all_head_size", "inner_dim")  # attributes holding heads x head_dim


@dataclass(frozen=True)
class AttentionScope:
    """One attention module's head geometry.

    Args:
        path: dotted path of the module.
        heads: query heads.
        kv_heads: key/value heads (= heads without grouped-query attention).
        head_dim: rows per head; None if only the projections' widths tell it.
    """

    path: str
    heads: int
    kv_heads: int
    head_dim: int | None


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _first(owner, names) -> int | None:
    return next((v for n in names if (v := _int(getattr(owner, n, None))) is not None), None)


def _scope(path: str, module: nn.Module, model_config) -> AttentionScope | None:
    heads = _first(module, HEAD_COUNTS)
    config = None
    if heads is None and "Attention" in type(module).__name__:
        config = getattr(module, "config", None) or model_config
        heads = _first(config, ("num_attention_heads",)) if config is not None else None
    if heads is None:
        return None
    head_dim = _first(module, HEAD_DIMS) or (_first(config, ("head_dim",)) if config else None)
    kv_heads = _first(module, KV_COUNTS)
    groups = _int(getattr(module, "num_key_value_groups", None))
    if kv_heads is None and groups is not None and heads % groups == 0:
        kv_heads = heads // groups
    if kv_heads is None and config is not None:
        kv_heads = _first(config, ("num_key_value_heads",))
    return AttentionScope(path, heads, kv_heads or heads, head_dim)


def attention_scopes(model: nn.Module) -> dict[str, AttentionScope]:
    """Every module of `model` that knows its attention head count, by dotted path."""
    config = config_of(model)
    found = {}
    for path, module in model.named_modules():
        if path and not isinstance(module, ChannelMasked):
            scope = _scope(path, module, config)
            if scope is not None:
                found[path] = scope
    return found


def _inside(path: str, prefix: str) -> bool:
    return prefix == "" or path == prefix or path.startswith(prefix + ".")


def _parent(path: str, scopes: dict[str, AttentionScope]) -> AttentionScope | None:
    """The scope whose direct child `path` is (a model-level `num_heads` is not a scope of
    the projections deep inside it)."""
    return scopes.get(path.rpartition(".")[0])


@dataclass
class HeadLinks:
    """What per-head grouping adds to traced entries.

    Args:
        unions: `(slot key, head key)` pairs to join in the channel union-find.
        problems: module id -> why its group is left out.
        dropped: `(module id, role)` entries to drop (per-head norms over `head_dim`, which
            removing whole heads leaves untouched).
    """

    unions: list[tuple]
    problems: dict[int, str]
    dropped: set[tuple[int, str]]


def head_links(model: nn.Module, entries, names: dict[int, str], layer_types) -> HeadLinks:
    """Per-head couplings of the traced `entries` (see the module docstring).

    Args:
        model: the adapted model.
        entries: `(traced group index, channel, module, role, position)` tuples.
        names: module id -> dotted path.
        layer_types: the plain layer types that produce channels (Linear, ConvNd).

    Returns:
        The unions, problems and dropped entries.
    """
    links = HeadLinks([], {}, set())
    scopes = attention_scopes(model)
    if not scopes:
        return links
    by_group: dict[int, dict[tuple[int, str], tuple[nn.Module, set[int]]]] = defaultdict(dict)
    for group, _, module, role, position in entries:
        slot = by_group[group].setdefault((id(module), role), (module, set()))
        slot[1].add(position)
    for members in by_group.values():
        scope = _head_scope(members, names, scopes, layer_types)
        if scope is not None:
            _link_group(scope, members, names, layer_types, links)
    return links


def _is_layer(module, layer_types) -> bool:
    return isinstance(module, ChannelMasked) or isinstance(module, layer_types)


def _head_scope(members, names, scopes, layer_types) -> AttentionScope | None:
    found = {
        scope.path: scope
        for (key, role), (module, _) in members.items()
        if role == "out" and _is_layer(module, layer_types)
        if (scope := _parent(names[key], scopes)) is not None
    }
    if len(found) != 1:
        return None
    scope = next(iter(found.values()))
    block = scope.path.rpartition(".")[0]
    if not block or not all(_inside(names[key], block) for key, _ in members):
        return None  # the group leaves the block: a residual stream, not heads
    return scope


def _link_group(scope, members, names, layer_types, links: HeadLinks) -> None:
    widths = [
        _width(module, role)
        for (_, role), (module, _) in members.items()
        if _is_layer(module, layer_types) and role in ("out", "in")
    ]
    head_dim = scope.head_dim or (max(widths) // scope.heads if widths else None)
    if not head_dim or scope.heads % scope.kv_heads:
        return
    query, kv = scope.heads * head_dim, scope.kv_heads * head_dim
    per_kv = scope.heads // scope.kv_heads
    for (key, role), (module, positions) in members.items():
        if not (_is_layer(module, layer_types) and role in ("out", "in")):
            if _width(module, role) == head_dim:
                links.dropped.add((key, role))  # a per-head norm over head_dim (Qwen3 q_norm)
            continue
        width = _width(module, role)
        if width not in (query, kv):
            links.problems[key] = (
                f"attention projection of {scope.path} with {width} "
                f"{'rows' if role == 'out' else 'columns'}, not {scope.heads} heads x head_dim "
                f"{head_dim} (a fused projection's row layout is a family's knowledge: add a "
                "spa.families.Family)"
            )
            continue
        for position in positions:
            head = position // head_dim
            kv_head = head // per_kv if width == query else head
            links.unions.append((("slot", key, role, position), ("head", scope.path, kv_head)))


def _width(module: nn.Module, role: str) -> int:
    return mask_size(module, role)


def head_counts_before(model: nn.Module) -> list[tuple[nn.Module, dict[str, int], list, int]]:
    """Each scope's head attributes and the query-like projections they describe (before
    compaction): `(scope module, {attribute: value}, [(projection, attribute)], head_dim)`."""
    snapshot = []
    modules = dict(model.named_modules())
    for path, scope in attention_scopes(model).items():
        module = modules[path]
        projections = [
            layer for name, layer in module.named_children() if isinstance(layer, ChannelMasked)
        ]
        if not projections:
            continue
        head_dim = scope.head_dim or max(len(p.out_mask) for p in projections) // scope.heads
        values = {
            name: value
            for name in (*HEAD_COUNTS, *KV_COUNTS, *WIDTHS)
            if (value := _int(getattr(module, name, None))) is not None
        }
        pairs = []
        for name, value in values.items():
            width = value if name in WIDTHS else value * head_dim
            match = [p for p in projections if len(p.out_mask) == width]
            if match:  # the most-pruned projection of that width carries the heads
                pairs.append((min(match, key=lambda p: int(p.out_mask.sum())), name))
        snapshot.append((module, values, pairs, head_dim))
    return snapshot


def sync_head_counts(snapshot) -> None:
    """Write the compacted head counts into the scopes recorded by `head_counts_before`."""
    for module, values, pairs, head_dim in snapshot:
        for projection, name in pairs:
            rows = len(projection.out_mask)
            if name in WIDTHS:
                setattr(module, name, rows)
            elif rows % head_dim == 0 and rows // head_dim != values[name]:
                setattr(module, name, rows // head_dim)
