"""Transformer pruning units (attention heads, FFN neurons) as channel groups, from descriptions.

For a model of a described family (`spa.families`) the groups are built directly from the
description, without tracing: one group per block and unit.

- "heads": group channel `j` is key/value head `j` with its query heads (with grouped-query
  attention, the `num_key_value_groups` query heads that read it), so removing it keeps the
  query heads per key/value head unchanged. Its positions are the head's `head_dim` rows in
  query, key and value (or in the three thirds of a fused qkv projection), the matching
  columns of the output projection and its query heads' slices of every described per-head
  tensor (role "param", e.g. Swin's relative position bias table, sliced on its head axis).
- "ffn": group channel `i` is neuron `i`: row `i` of every input projection (up, gate) and
  column `i` of the output projection (down).

The groups are ordinary `ChannelGroup`s, so criteria, ranking, masks, compaction, bundles and
accounting use them unchanged (a criterion averages its per-row statistics over a channel's
rows).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from spa.adapters.protocols import ChannelMasked
from spa.errors import ConfigError, UnsupportedLayerError
from spa.families import BlockLayout, Family, block_layouts, head_counts
from spa.families.description import tensor_at
from spa.pruning.channel_group import ChannelGroup, GroupMember, layer_table, mask_size
from spa.pruning.module_masks import module_mask

UNITS = ("heads", "ffn")
# (module path, role, positions, channels) before the mask state is read.
_Slice = tuple[str, str, list[int], list[int]]


def _head_slices(model: nn.Module, layout: BlockLayout) -> tuple[int, list[_Slice]]:
    counts = head_counts(model, layout)
    head_dim, kv_heads, groups = layout.head_dim, counts["kv_heads"], counts["kv_groups"]
    width = counts["width"]
    # Query rows of channel j: its `groups` query heads, head_dim rows each.
    query = [
        p for j in range(kv_heads) for r in range(groups) for p in _rows(j * groups + r, head_dim)
    ]
    query_channels = [j for j in range(kv_heads) for _ in range(groups * head_dim)]
    kv = [p for j in range(kv_heads) for p in _rows(j, head_dim)]
    kv_channels = [j for j in range(kv_heads) for _ in range(head_dim)]
    if layout.qkv is not None:  # rows [q | k | v], each `width` long
        fused = query + [width + p for p in kv] + [2 * width + p for p in kv]
        slices = [(layout.qkv, "out", fused, query_channels + kv_channels + kv_channels)]
    else:
        slices = [
            (layout.query, "out", query, query_channels),
            (layout.key, "out", kv, kv_channels),
            (layout.value, "out", kv, kv_channels),
        ]
    slices.append((layout.output, "in", query, query_channels))
    heads = [j * groups + r for j in range(kv_heads) for r in range(groups)]
    head_channels = [j for j in range(kv_heads) for _ in range(groups)]
    slices += [(path, "param", heads, head_channels) for path, _ in layout.per_head]
    return kv_heads, slices


def _rows(head: int, head_dim: int) -> range:
    return range(head * head_dim, (head + 1) * head_dim)


def _ffn_slices(model: nn.Module, layout: BlockLayout) -> tuple[int, list[_Slice]]:
    neurons = head_counts(model, layout)["neurons"]
    every = list(range(neurons))
    slices = [(path, "out", every, every) for path in layout.ffn_inputs]
    slices.append((layout.ffn_output, "in", every, every))
    return neurons, slices


_BUILDERS = {"heads": _head_slices, "ffn": _ffn_slices}


def _member(
    model: nn.Module, axes: dict[str, int], path: str, role: str, positions, channels
) -> GroupMember:
    if role == "param":
        size = tensor_at(model, path).shape[axes[path]]  # checked by `block_layouts`
        return _checked(path, role, positions, channels, size, is_adapter=False)
    module = model.get_submodule(path)
    if not (isinstance(module, ChannelMasked) or isinstance(module, nn.Linear)):
        raise UnsupportedLayerError(
            f"{path}: a {type(module).__name__} cannot be a member of a head/FFN group (SPLoRA, "
            "fine-pruning and plain nn.Linear layers can); adapt it with SPLoRA or fine-pruning"
        )
    size = mask_size(module, role)
    return _checked(path, role, positions, channels, size, isinstance(module, ChannelMasked))


def _checked(path: str, role: str, positions, channels, size: int, is_adapter: bool):
    if len(positions) and max(positions) >= size:
        raise ConfigError(f"{path}: head/FFN rows exceed its {size} {role} channels")
    return GroupMember(
        name=path,
        role=role,
        positions=tuple(positions),
        channels=tuple(channels),
        mask_size=size,
        is_adapter=is_adapter,
    )


def _kept_positions(model: nn.Module, member: GroupMember) -> list[bool] | None:
    """The member's mask as a list (None: nothing masked), read once instead of per position."""
    if member.role == "param":
        return None  # a per-head tensor follows its group's projections
    module, role = model.get_submodule(member.name), member.role
    if isinstance(module, ChannelMasked):
        return (module.out_mask if role == "out" else module.in_mask).tolist()
    mask = module_mask(module, "in" if role == "in" else "out")
    return None if mask is None else mask.tolist()


def unit_groups(
    model: nn.Module, family: Family, units: Sequence[str] = UNITS
) -> list[ChannelGroup]:
    """Channel groups of the chosen transformer units, one per block and unit.

    Args:
        model: an adapted model of `family` (masked or not; compacted models are read from
            their current shapes).
        family: its description (see `spa.families.describe`).
        units: which units to prune: any of "heads" and "ffn".

    Returns:
        The groups, block by block, heads before FFN.

    Raises:
        ConfigError: for an unknown unit or a model that does not match the description.
        UnsupportedLayerError: if a described projection is neither an adapter layer nor a
            plain `nn.Linear`.
    """
    unknown = [unit for unit in units if unit not in _BUILDERS]
    if unknown or not units:
        raise ConfigError(f"units must be a non-empty selection of {list(UNITS)}, got {units!r}")
    layers = layer_table(model)
    groups = []
    for layout in block_layouts(model, family):
        for unit in UNITS:
            if unit not in units:
                continue
            size, slices = _BUILDERS[unit](model, layout)
            axes = dict(layout.per_head)
            members = tuple(_member(model, axes, *piece) for piece in slices)
            kept = [True] * size
            for member in members:
                mask = _kept_positions(model, member)
                if mask is None:
                    continue
                for position, channel in zip(member.positions, member.channels):
                    if not mask[position]:
                        kept[channel] = False
            root = slices[0][0]
            groups.append(
                ChannelGroup(root=root, size=size, kept=tuple(kept), members=members, layers=layers)
            )
    return groups
