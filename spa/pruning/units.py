"""Transformer pruning units (attention heads, FFN neurons, the hidden size) as channel groups.

For a model of a described family (`spa.families`) the groups are built directly from the
description, without tracing: one group per block and unit, and one for the hidden size.

- "heads": group channel `j` is key/value head `j` with its query heads (with grouped-query
  attention, the `num_key_value_groups` query heads that read it), so removing it keeps the
  query heads per key/value head unchanged. Its positions are the head's `head_dim` rows in
  query, key and value (or in a fused qkv projection, wherever `spa.families.rows` places
  them), the matching
  columns of the output projection and its query heads' slices of every described per-head
  tensor (role "param", e.g. Swin's relative position bias table, sliced on its head axis;
  one per key/value head for `per_kv_head` tensors) and its channels of every joint q/k norm
  (role "norm", OLMo2's norms over all heads). Heads tied across blocks (T5) are one group
  for the whole model: channel `j` is key/value head `j` of every block.
- "ffn": group channel `i` is neuron `i`: row `i` of every input projection (up, gate; both
  parts of a fused `[gate | up]` projection) and column `i` of the output projection (down).
  A mixture of experts has one group per expert (and per shared expert); its router is left
  as it is.
- "hidden": group channel `c` is channel `c` of the residual stream (`spa.families.stream`):
  column `c` of every projection reading it (q, k, v, FFN inputs, the pooler or the task
  head), row `c` of every projection writing it (attention and FFN outputs, a patch
  projection), channel `c` of every norm on it and of every embedding and class token. Masked
  norms normalise over the kept channels only (`spa.pruning.norms`), so the masked model
  computes what the compacted one does; a removed channel may keep stale values in the
  stream between blocks, which no kept computation reads.

The groups are ordinary `ChannelGroup`s, so criteria, ranking, masks, compaction, bundles and
accounting use them unchanged (a criterion averages its per-row statistics over a channel's
rows).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from spa.adapters.inject import task_head
from spa.adapters.protocols import ChannelMasked
from spa.errors import ConfigError, UnsupportedLayerError
from spa.families import (
    BlockLayout,
    Family,
    block_layouts,
    ffn_neurons,
    head_rows,
    module_rows,
    neuron_rows,
    stream_layouts,
)
from spa.families.layouts import ffn_layouts, tensor_at
from spa.families.sync import check_head_counts
from spa.pruning.channel_group import (
    ChannelGroup,
    GroupMember,
    layer_table,
    mask_size,
    mask_values,
)
from spa.pruning.module_masks import module_mask
from spa.pruning.norms import is_last_axis_norm

UNITS = ("heads", "ffn", "hidden")
DEFAULT_UNITS = ("heads", "ffn")  # the hidden size is pruned only when asked for
# (module path, role, positions, channels) before the mask state is read.
_Slice = tuple[str, str, list[int], list[int]]


def _head_slices(model: nn.Module, layout: BlockLayout) -> tuple[int, list[_Slice]]:
    heads = head_rows(layout, module_rows(model))
    per_path: dict[tuple[str, str], list[tuple[int, int]]] = {}

    def add(path: str, role: str, positions: range, channel: int) -> None:
        per_path.setdefault((path, role), []).extend((p, channel) for p in positions)

    for j in range(heads.kv_heads):  # channel j: key/value head j with its query heads
        for head in range(j * heads.groups, (j + 1) * heads.groups):
            add(heads.query, "out", heads.query_rows(head), j)
            add(heads.output, "in", heads.output_columns(head), j)
        add(heads.key, "out", heads.key_rows(j), j)
        add(heads.value, "out", heads.value_rows(j), j)
    for path, which in layout.joint_norms:  # OLMo2's q/k norms over all heads together
        for j in range(heads.kv_heads):
            if which == "key":
                add(path, "norm", heads.key_rows(j), j)
            for head in range(j * heads.groups, (j + 1) * heads.groups):
                if which == "query":
                    add(path, "norm", heads.query_rows(head), j)
    slices = []
    for (path, role), pairs in per_path.items():
        pairs.sort()
        slices.append((path, role, [p for p, _ in pairs], [c for _, c in pairs]))
    order = list(range(heads.heads))
    channels = [head // heads.groups for head in order]
    slices += [(path, "param", order, channels) for path, _ in layout.per_head]
    every = list(range(heads.kv_heads))
    slices += [(path, "param", every, every) for path, _ in layout.per_kv_head]
    return heads.kv_heads, slices


def _ffn_slices(model: nn.Module, layout: BlockLayout) -> tuple[int, list[_Slice]]:
    neurons = ffn_neurons(layout, module_rows(model))
    rows, channels = neuron_rows(layout, neurons)
    slices = [(path, "out", rows, channels) for path in layout.ffn_inputs]
    every = list(range(neurons))
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
    if role == "norm":
        if not (isinstance(module, nn.LayerNorm) or is_last_axis_norm(module)):
            raise UnsupportedLayerError(
                f"{path}: a {type(module).__name__} on the residual stream is not a norm over "
                "its last axis (LayerNorm, RMSNorm), so spa cannot mask it exactly"
            )
        return _checked(path, role, positions, channels, mask_size(module, role), False)
    layer_types = nn.Linear if role == "in" else (nn.Linear, nn.modules.conv._ConvNd)
    if not (isinstance(module, ChannelMasked) or isinstance(module, layer_types)):
        raise UnsupportedLayerError(
            f"{path}: a {type(module).__name__} cannot be a member of a transformer unit group "
            "(SPLoRA, fine-pruning and plain nn.Linear layers can); adapt it with SPLoRA or "
            "fine-pruning"
        )
    size = mask_size(module, role)
    return _checked(path, role, positions, channels, size, isinstance(module, ChannelMasked))


def _checked(path: str, role: str, positions, channels, size: int, is_adapter: bool):
    if len(positions) and max(positions) >= size:
        raise ConfigError(f"{path}: unit positions exceed its {size} {role} channels")
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
        return mask_values(module.out_mask if role == "out" else module.in_mask)
    mask = module_mask(module, "in" if role == "in" else "out")
    return None if mask is None else mask_values(mask)


def _hidden_slices(model: nn.Module, family: Family) -> list[tuple[int, list[_Slice], dict]]:
    """Per residual stream (`spa.families.stream_layouts`; the task head reads the last one
    where no pooler does): its width, its members' slices and the stream axis of each bare
    tensor."""
    result = []
    for layout in stream_layouts(model, family, head=task_head(model)):
        slices = []
        for path, role, _, parts in layout.members:
            positions = list(range(parts * layout.width))
            slices.append((path, role, positions, [p % layout.width for p in positions]))
        axes = {path: axis for path, role, axis, _ in layout.members if role == "param"}
        result.append((layout.width, slices, axes))
    return result


def _group(model: nn.Module, unit: str, size: int, slices: list[_Slice], axes, layers):
    members = tuple(_member(model, axes, *piece) for piece in slices)
    kept = [True] * size
    for member in members:
        mask = _kept_positions(model, member)
        if mask is None:
            continue
        for position, channel in zip(member.positions, member.channels):
            if not mask[position]:
                kept[channel] = False
    root = next((path for path, role, *_ in slices if role == "out"), slices[0][0])
    return ChannelGroup(
        root=root, size=size, kept=tuple(kept), members=members, layers=layers, unit=unit
    )


def _tied_heads(model: nn.Module, family: Family, layouts: list[BlockLayout], layers):
    """One heads group over every block (`AttentionDescription.tied_heads`): channel `j` is
    key/value head `j` of each block, so every block keeps the same heads."""
    sizes, slices, axes = set(), [], {}
    for layout in layouts:
        size, found = _head_slices(model, layout)
        sizes.add(size)
        slices += found
        axes.update({**dict(layout.per_head), **dict(layout.per_kv_head)})
    if len(sizes) != 1:
        raise ConfigError(
            f"model family {family.name!r}: its blocks must keep the same heads "
            f"({family.attention.tied_heads}), but they have {sorted(sizes)} key/value heads"
        )
    return _group(model, "heads", sizes.pop(), slices, axes, layers)


def unit_groups(
    model: nn.Module, family: Family, units: Sequence[str] = DEFAULT_UNITS
) -> list[ChannelGroup]:
    """Channel groups of the chosen transformer units: heads and FFN neurons per block, and
    the hidden size once for the whole model.

    Args:
        model: an adapted model of `family` (masked or not; compacted models are read from
            their current shapes).
        family: its description (see `spa.families.describe`).
        units: which units to prune: any of "heads", "ffn" and "hidden".

    Returns:
        The groups, block by block, heads before FFN, then the hidden-size group.

    Raises:
        ConfigError: for an unknown unit, a model that does not match the description, or
            "hidden" for a family that does not describe its residual stream.
        UnsupportedLayerError: if a described projection is neither an adapter layer nor a
            plain `nn.Linear` (or, writing the stream, a convolution).
    """
    unknown = [unit for unit in units if unit not in UNITS]
    if unknown or not units:
        raise ConfigError(f"units must be a non-empty selection of {list(UNITS)}, got {units!r}")
    layouts = block_layouts(model, family)
    if "heads" in units and family.attention.fixed_heads:
        raise ConfigError(
            f"{layouts[0].attention} (model family {family.name!r}): attention heads cannot be "
            f"pruned: {family.attention.fixed_heads}; prune units=('ffn',) or ('ffn', 'hidden')"
        )
    if "heads" in units:
        check_head_counts(model, family, layouts)
    layers = layer_table(model)
    groups = []
    if "heads" in units and family.attention.tied_heads:
        groups.append(_tied_heads(model, family, layouts, layers))
    for layout in layouts:
        for unit in ("heads", "ffn"):
            if unit not in units or (unit == "heads" and family.attention.tied_heads):
                continue
            # One FFN group per expert and shared expert of a mixture of experts.
            for part in ffn_layouts(layout) if unit == "ffn" else (layout,):
                size, slices = _BUILDERS[unit](model, part)
                axes = {**dict(layout.per_head), **dict(layout.per_kv_head)}
                groups.append(_group(model, unit, size, slices, axes, layers))
    if "hidden" in units:
        for size, slices, axes in _hidden_slices(model, family):
            groups.append(_group(model, "hidden", size, slices, axes, layers))
    return groups
