"""Channel groups as spa dataclasses, and how coupled channels are merged into them.

`spa.pruning.groups` reads Torch-Pruning's dependency graph into plain entries; this module
turns them into `ChannelGroup`s (no Torch-Pruning object) and re-reads mask state.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import torch
from torch import nn

from spa.adapters._conv import groups_of, overridden_method
from spa.adapters.modules import norm_channels
from spa.adapters.protocols import ChannelMasked, channel_layers
from spa.errors import SpaWarning
from spa.pruning.module_masks import layer_norm_dim, module_mask, parameter_dim
from spa.pruning.norms import is_last_axis_norm

Role = Literal["out", "in", "norm", "param"]
LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_MASKABLE_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


@dataclass(frozen=True)
class LayerInfo:
    """Mask state of one adapter layer when the groups were built (for density bookkeeping).

    Args:
        name: dotted path of the channel-masked adapter layer.
        out_mask: `m_row` as booleans.
        in_mask: `m_col` as booleans (length in/groups).
        kernel: spatial kernel elements (1 for Linear).
        base_weights: weight count of the original, uncompacted base layer.
    """

    name: str
    out_mask: tuple[bool, ...]
    in_mask: tuple[bool, ...]
    kernel: int
    base_weights: int


@dataclass(frozen=True)
class GroupMember:
    """One module's share of a channel group.

    Args:
        name: dotted module path.
        role: "out" (output channels / weight rows), "in" (input channels; weight columns for
            adapter layers), "norm" (a normalisation layer's channels) or "param" (a bare
            per-channel parameter such as ConvNeXt's `layer_scale_parameter`; `name` is then the
            parameter's dotted path).
        positions: indices into the member's mask (`out_mask`, `in_mask`, the norm channels or
            the parameter's channel axis).
        channels: the group channel each position belongs to.
        mask_size: length of the member's mask.
        is_adapter: True for channel-masked adapter members (they count toward density).
    """

    name: str
    role: Role
    positions: tuple[int, ...]
    channels: tuple[int, ...]
    mask_size: int
    is_adapter: bool


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be removed together, and every module slice they touch.

    Args:
        root: dotted path of the layer whose output channels seeded the group.
        size: number of group channels (coupled channel sets).
        kept: per group channel, False if it is already masked out.
        members: the modules and positions of every channel.
        layers: mask state of all adapter layers of the model (shared by all groups of one
            `channel_groups` call), for density bookkeeping.
        unit: the transformer unit ("heads", "ffn", "hidden") of a described family's group;
            None for traced groups.
    """

    root: str
    size: int
    kept: tuple[bool, ...]
    members: tuple[GroupMember, ...]
    layers: MappingProxyType
    unit: str | None = None

    def producers(self) -> list[GroupMember]:
        """Members whose output channels carry the group's channels (Linear/Conv, role "out")."""
        return [member for member in self.members if member.role == "out"]


class UnionFind:
    def __init__(self) -> None:
        self.parent: dict = {}

    def find(self, key):
        self.parent.setdefault(key, key)
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, a, b) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[max(root_a, root_b)] = min(root_a, root_b)


def unsupported(module: nn.Module | nn.Parameter) -> str | None:
    """Why masking `module` would not match its compacted form, or None if it would."""
    if isinstance(module, (*_MASKABLE_NORMS, nn.Parameter)) or isinstance(module, ChannelMasked):
        return None  # a bare parameter's use is checked where the graph is known (groups.py)
    if isinstance(module, nn.LayerNorm):
        if len(module.normalized_shape) != 1:
            return "multi-dimensional LayerNorm"
        if layer_norm_dim(module) is None:
            return (
                f"{type(module).__name__} overrides LayerNorm.forward without a known "
                "data_format ('channels_last' or 'channels_first'), so its channel axis is unknown"
            )
        return None
    if is_last_axis_norm(module):
        return None  # masked over its kept channels only (spa.pruning.norms)
    if isinstance(module, LAYER_TYPES):
        method = overridden_method(module)
        if method is not None:
            return f"{type(module).__name__} overrides {method}, so its masked form is unknown"
        if isinstance(module, nn.modules.conv._ConvNd) and (
            module.groups > 1 and module.in_channels == module.groups != module.out_channels
        ):
            return "depth-wise conv with a channel multiplier"
        return None
    return f"{type(module).__name__} (masking it would not match the compacted model)"


def mask_values(mask: torch.Tensor) -> list[bool]:
    """A boolean mask's values; all kept for a mask on the meta device.

    A model built on the meta device holds no values: its masks are the ones `adapt` made
    (nothing pruned), which is what planning before any weight is loaded needs (issue 22).
    """
    return [True] * mask.numel() if mask.is_meta else [bool(v) for v in mask.tolist()]


def layer_table(model: nn.Module) -> MappingProxyType:
    table = {}
    for name, layer in channel_layers(model):
        table[name] = LayerInfo(
            name=name,
            out_mask=tuple(mask_values(layer.out_mask)),
            in_mask=tuple(mask_values(layer.in_mask)),
            kernel=math.prod(layer.base.weight.shape[2:]),
            base_weights=math.prod(layer.base_shape),
        )
    return MappingProxyType(table)


def mask_size(module: nn.Module, role: Role) -> int:
    if role == "param":
        return module.shape[parameter_dim(module)]
    if isinstance(module, ChannelMasked):
        return len(module.out_mask if role == "out" else module.in_mask)
    if role == "in":
        return module.weight.shape[1] * groups_of(module)
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1]
    if is_last_axis_norm(module):
        return norm_channels(module)
    if isinstance(module, LAYER_TYPES):
        return module.weight.shape[0]
    return module.num_features


def is_kept(module: nn.Module, role: Role, position: int) -> bool:
    if role == "param":
        return True  # a bare parameter follows its group's other members
    if isinstance(module, ChannelMasked):
        mask = module.out_mask if role == "out" else module.in_mask
    else:
        mask = module_mask(module, "in" if role == "in" else "out")
    return mask is None or mask.is_meta or bool(mask[position])


def assemble(
    roots: list[str], entries, links: UnionFind, names, layers, problems=None
) -> list[ChannelGroup]:
    """Merge traced entries into `ChannelGroup`s.

    Args:
        roots: root layer path of each traced group.
        entries: `(traced group index, global channel, module, role, position)` tuples.
        links: union-find over `("ch", global channel)` keys (coupled channels are joined).
        names: module (or bare parameter) id -> dotted path.
        layers: from `layer_table`.
        problems: module (or bare parameter) id -> why spa cannot slice it with its group.

    Returns:
        One group per set of traced groups that share a channel; groups touching a module or
        parameter whose masked form would differ from its compacted form (or that spa cannot
        slice) are dropped with a `SpaWarning` naming it.
    """
    problems = problems or {}
    # Classes of the union-find are the final channels; TP groups sharing a class merge.
    tp_links = UnionFind()
    class_groups: dict = defaultdict(set)
    for group_index, channel, *_ in entries:
        class_groups[links.find(("ch", channel))].add(group_index)
    for indices in class_groups.values():
        first = min(indices)
        for index in indices:
            tp_links.union(first, index)
    by_group: dict = defaultdict(list)
    for entry in entries:
        by_group[tp_links.find(entry[0])].append(entry)
    result = []
    for group_index in sorted(by_group):
        group_entries = by_group[group_index]
        found = {
            names[id(e[2])]: problems.get(id(e[2])) or unsupported(e[2]) for e in group_entries
        }
        found = {name: why for name, why in found.items() if why}
        root = roots[group_index]
        if found:
            warnings.warn(
                f"channel group rooted at {root} is not pruned: it touches "
                + ", ".join(f"{name} ({why})" for name, why in found.items()),
                SpaWarning,
                stacklevel=3,
            )
            continue
        result.append(_build_group(root, group_entries, links, names, layers))
    return result


def _build_group(root, group_entries, links, names, layers) -> ChannelGroup:
    classes: dict = {}
    for _, channel, *_ in sorted(group_entries, key=lambda e: e[1]):
        classes.setdefault(links.find(("ch", channel)), len(classes))
    slots: dict = defaultdict(dict)  # (module, role) -> {position: group channel}
    modules = {}
    for _, channel, module, role, position in group_entries:
        slots[(id(module), role)][position] = classes[links.find(("ch", channel))]
        modules[id(module)] = module
    kept = [True] * len(classes)
    members = []
    for (module_id, role), mapping in slots.items():
        module = modules[module_id]
        positions = sorted(mapping)
        for position in positions:
            if not is_kept(module, role, position):
                kept[mapping[position]] = False
        members.append(
            GroupMember(
                name=names[module_id],
                role=role,
                positions=tuple(positions),
                channels=tuple(mapping[p] for p in positions),
                mask_size=mask_size(module, role),
                is_adapter=isinstance(module, ChannelMasked),
            )
        )
    return ChannelGroup(
        root=root, size=len(classes), kept=tuple(kept), members=tuple(members), layers=layers
    )


def refresh_groups(model: nn.Module, groups: Sequence[ChannelGroup]) -> list[ChannelGroup]:
    """The same groups with `kept` and `layers` re-read from the model's current masks.

    Use it between pruning steps of an uncompacted model instead of re-tracing; after
    `compact`, call `channel_groups` again (positions change).

    Args:
        model: the model the groups were built for (not compacted since).
        groups: from `channel_groups`.

    Returns:
        Updated groups.
    """
    layers = layer_table(model)
    result = []
    for group in groups:
        kept = [True] * group.size
        for member in group.members:
            if member.role == "param":
                continue  # follows the group's other members
            module = model.get_submodule(member.name)
            for position, channel in zip(member.positions, member.channels):
                if not is_kept(module, member.role, position):
                    kept[channel] = False
        result.append(dataclasses.replace(group, kept=tuple(kept), layers=layers))
    return result
