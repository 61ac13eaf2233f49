"""Scores + target density -> channel masks (global or local ranking), and applying them.

Density is the fraction of the prunable layers' base weights that is retained: the sum over
adapter layers of `||m_row||_0 * ||m_col||_0 * k` divided by the sum of their original
(uncompacted) weight counts, as in the paper. Removing a group channel removes its rows from
every producer and its columns from every consumer, so the retained count is updated exactly
after every removal.
"""

from __future__ import annotations

import heapq
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from spa.adapters.protocols import IN_MASK, OUT_MASK, ChannelMasked
from spa.errors import ConfigError, SpaWarning
from spa.families import sliced_tensor_axes
from spa.pruning.budget import MacsProfile
from spa.pruning.budget import RetainedWeights as _Retained
from spa.pruning.groups import ChannelGroup
from spa.pruning.module_masks import parameter_dim, set_module_mask, set_parameter_mask

# Module path -> {OUT_MASK: bool tensor, IN_MASK: bool tensor} (either may be absent).
ChannelMasks = dict[str, dict[str, torch.Tensor]]
Ranking = Literal["global", "local"]


RoundTo = int | Mapping[str, int] | None


def _steps(groups: Sequence[ChannelGroup], round_to: RoundTo) -> list[int | None]:
    """Each group's channel-count multiple: `round_to` itself, or its entry for the group's
    transformer unit (groups of other units, and traced groups, are not rounded)."""
    if not isinstance(round_to, Mapping):
        return [round_to] * len(groups)
    return [round_to.get(group.unit) if group.unit else None for group in groups]


def _floor(size: int, min_channels: int, min_fraction: float, round_to: int | None) -> int:
    floor = max(min_channels, math.ceil(min_fraction * size), 1)
    if round_to:
        floor = math.ceil(floor / round_to) * round_to
    return min(floor, size)


def _chunks(
    group: ChannelGroup, scores: torch.Tensor, floor: int, round_to: int | None
) -> list[tuple[float, list[int]]]:
    """Removable channels of a group, lowest score first, in chunks keeping `round_to` widths."""
    values = scores.tolist()
    alive = [c for c in range(group.size) if group.kept[c]]
    alive.sort(key=lambda c: values[c])
    kept = len(alive)
    chunks = []
    step = round_to or 1
    start = 0
    while kept > floor:
        size = kept % step or step
        if kept - size < floor:
            break
        chunk = alive[start : start + size]
        chunks.append((sum(values[c] for c in chunk) / size, chunk))
        start, kept = start + size, kept - size
    return chunks


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check(
    groups: Sequence[ChannelGroup],
    scores: Mapping[int, torch.Tensor],
    *,
    density: float,
    ranking: str,
    min_channels: int,
    min_fraction: float,
    round_to: RoundTo,
) -> None:
    if not groups:
        raise ConfigError("compute_masks: no channel groups; nothing can be pruned")
    if not 0.0 < density <= 1.0:
        raise ConfigError(f"compute_masks: density must be in (0, 1], got {density!r}")
    if ranking not in ("global", "local"):
        raise ConfigError(f"compute_masks: ranking must be 'global' or 'local', got {ranking!r}")
    if min_channels < 1:
        raise ConfigError(f"compute_masks: min_channels must be >= 1, got {min_channels!r}")
    if not 0.0 <= min_fraction <= 1.0:
        raise ConfigError(f"compute_masks: min_fraction must be in [0, 1], got {min_fraction!r}")
    steps = round_to.values() if isinstance(round_to, Mapping) else [round_to]
    if any(step is not None and not _is_count(step) for step in steps):
        raise ConfigError(
            "compute_masks: round_to must be >= 1, a mapping of transformer units to such "
            f"numbers, or None; got {round_to!r}"
        )
    for index, group in enumerate(groups):
        if index not in scores or scores[index].shape != (group.size,):
            got = None if index not in scores else tuple(scores[index].shape)
            raise ConfigError(
                f"compute_masks: scores[{index}] (group rooted at {group.root}) must have shape "
                f"({group.size},), got {got}"
            )


def compute_masks(
    groups: Sequence[ChannelGroup],
    scores: Mapping[int, torch.Tensor],
    density: float,
    ranking: Ranking = "global",
    min_channels: int = 1,
    min_fraction: float = 0.0,
    round_to: RoundTo = None,
    macs: MacsProfile | None = None,
) -> ChannelMasks:
    """Choose the channels to remove so that the retained weight density reaches `density`.

    Channels already masked stay removed. Global ranking removes the lowest-scored channel (or
    chunk, with `round_to`) over all groups until the density is at most `density`; scores
    should be normalised per layer (as `score` returns them). Local ranking removes the same
    fraction of every group's channels (the smallest fraction reaching `density`), so groups of
    the same size keep the same count: for the transformer units of a described family (one
    heads group and one FFN group per block, `spa.pruning.units`) every layer keeps the same
    number of heads and of FFN neurons, which a `transformers` config needs
    (`spa.save_pretrained`), as long as the layers started alike (no earlier global ranking).

    Args:
        groups: from `channel_groups`.
        scores: per group index, one score per group channel (higher = more important).
        density: target fraction of the prunable layers' base weights to keep, in (0, 1].
        ranking: "global" (all groups compete) or "local" (same fraction per group; the same
            heads / FFN neurons per layer for transformer units).
        min_channels: never keep fewer channels than this in a group (never zero).
        min_fraction: never keep fewer than this fraction of a group's channels.
        round_to: keep channel counts multiples of this (hardware-friendly widths); None = 1.
            A mapping rounds the groups of the transformer units it names only, e.g.
            `{"hidden": 4}` keeps a hidden size a `transformers` config with 4 heads accepts.
        macs: a `MacsProfile` (from `spa.pruning.macs_profile`) to prune to a compute budget:
            `density` is then the fraction of the whole model's MACs (and FLOPs) to keep.

    Returns:
        Masks for every member module, to pass to `apply_masks`.

    Raises:
        ConfigError: for invalid arguments or scores of the wrong shape.
    """
    _check(
        groups,
        scores,
        density=density,
        ranking=ranking,
        min_channels=min_channels,
        min_fraction=min_fraction,
        round_to=round_to,
    )
    steps = _steps(groups, round_to)
    floors = [_floor(g.size, min_channels, min_fraction, s) for g, s in zip(groups, steps)]
    problem = _Problem(groups, scores, density, floors, steps, macs)
    removed = _global(problem) if ranking == "global" else _local(problem)
    start = _Retained(groups, macs)
    reached = _density_of(groups, removed, start)
    what = "MACs fraction" if macs is not None else "density"
    if reached > density + 1e-9:
        warnings.warn(
            f"compute_masks: {what} {density:.4f} not reached (got {reached:.4f}): the channel "
            "floors stop further pruning",
            SpaWarning,
            stacklevel=2,
        )
    elif density - reached > _SLACK * (unit := _smallest_unit(groups, start, floors)) + 1e-9:
        warnings.warn(
            f"compute_masks: {what} {density:.4f} overshot by {density - reached:.4f} (got "
            f"{reached:.4f}), more than {_SLACK} of the smallest units ({unit:.4f} each): "
            + (
                "local ranking removes the same fraction of every group"
                if ranking == "local"
                else "the units left near the target are larger (floors or round_to)"
            ),
            SpaWarning,
            stacklevel=2,
        )
    return _masks(groups, removed)


def _smallest_unit(groups: Sequence[ChannelGroup], start: _Retained, floors) -> float:
    """The least density one removable group channel takes away (0 if none is removable)."""
    drops = [
        start.density - start.density_without(index, [channel])
        for index, group in enumerate(groups)
        if sum(group.kept) > floors[index]
        for channel in [next(c for c in range(group.size) if group.kept[c])]
    ]
    return min(drops, default=0.0)


def _initial(
    groups: Sequence[ChannelGroup], macs: MacsProfile | None = None
) -> tuple[_Retained, list[set[int]]]:
    state = _Retained(groups, macs)
    # Layer masks already exclude removed channels; only record them.
    removed = [{c for c in range(g.size) if not g.kept[c]} for g in groups]
    return state, removed


@dataclass(frozen=True)
class _Problem:
    """One ranking problem of `compute_masks`: groups, scores, target and per-group limits."""

    groups: Sequence[ChannelGroup]
    scores: Mapping[int, torch.Tensor]
    density: float  # target density (or MACs fraction with `macs`)
    floors: list[int]  # fewest channels each group keeps
    steps: list[int | None]  # each group's channel-count multiple (None: any count)
    macs: MacsProfile | None


_SLACK = 2  # overshoot allowed before a chunk is set aside, in smallest units


def _global(problem: _Problem) -> list[set[int]]:
    """Remove the lowest-scored chunk over all groups until the target is reached.

    A chunk that would overshoot the target by more than two of the smallest units (an
    attention head when a few FFN neurons would do) is set aside, blocking its group, while
    smaller chunks of other groups fill the rest; if those do not reach the target, the
    set-aside chunk that reaches it with the least overshoot is removed. So the result lands
    within `_SLACK` smallest units of the target where such units are left, not within the
    largest unit (Taylor on tiny Llama-like decoders stopped at 0.22-0.25 for 0.3); between
    units of similar size the order stays that of the scores.
    """
    groups, scores, floors, steps = problem.groups, problem.scores, problem.floors, problem.steps
    state, removed = _initial(groups, problem.macs)
    slack = _SLACK * _smallest_unit(groups, state, floors)
    queues = [_chunks(g, scores[i], floors[i], steps[i]) for i, g in enumerate(groups)]
    heap = [(queue[0][0], index, 0) for index, queue in enumerate(queues) if queue]
    heapq.heapify(heap)
    aside: list[tuple[int, list[int]]] = []
    while heap and state.density > problem.density:
        _, index, position = heapq.heappop(heap)
        chunk = queues[index][position][1]
        if state.density_without(index, chunk) < problem.density - slack:
            aside.append((index, chunk))  # blocks its group: its later chunks score higher
            continue
        _remove(state, removed, index, chunk)
        if position + 1 < len(queues[index]):
            heapq.heappush(heap, (queues[index][position + 1][0], index, position + 1))
    if aside and state.density > problem.density:
        index, chunk = max(aside, key=lambda item: state.density_without(*item))
        _remove(state, removed, index, chunk)
    return removed


def _remove(state: _Retained, removed: list[set[int]], index: int, chunk: list[int]) -> None:
    for channel in chunk:
        state.remove(index, channel)
        removed[index].add(channel)


def _local_removal(problem: _Problem, fraction: float) -> list[set[int]]:
    """Remove `fraction` of every group's channels (within its floor), lowest scores first."""
    removed = []
    for index, group in enumerate(problem.groups):
        floor = problem.floors[index]
        target = max(floor, group.size - math.floor(fraction * group.size + 1e-9))
        round_to = problem.steps[index]
        if round_to:
            target = min(group.size, math.ceil(target / round_to) * round_to)
        dead = {c for c in range(group.size) if not group.kept[c]}
        values = problem.scores[index].tolist()
        alive = sorted(set(range(group.size)) - dead, key=lambda c: values[c])
        extra = max(0, len(alive) - target)
        removed.append(dead | set(alive[:extra]))
    return removed


def _density_of(groups, removed, start: _Retained) -> float:
    # Count removed rows/columns per layer first, then the retained weights once.
    out, cols = dict(start.out), dict(start.cols)
    for index, channels in enumerate(removed):
        for channel in channels:
            if groups[index].kept[channel]:
                for name, role, count in start.effects(index, channel):
                    (out if role == "out" else cols)[name] -= count
    total = sum(out[name] * cols[name] * start.kernel[name] for name in out)
    return (start.fixed + total) / (start.fixed + start.base) if start.base else 1.0


def _local(problem: _Problem) -> list[set[int]]:
    """The smallest shared fraction of every group's channels that reaches the target."""
    groups, density = problem.groups, problem.density
    low, high = 0.0, 1.0
    best = _local_removal(problem, high)
    start = _Retained(groups, problem.macs)  # built once: cheaper than rebuilding per candidate
    lowest = _local_removal(problem, low)
    if _density_of(groups, lowest, start) <= density:
        return lowest
    for _ in range(30):  # bisection on the shared fraction
        middle = (low + high) / 2
        candidate = _local_removal(problem, middle)
        if _density_of(groups, candidate, start) <= density:
            high, best = middle, candidate
        else:
            low = middle
    return best


def _masks(groups: Sequence[ChannelGroup], removed: list[set[int]]) -> ChannelMasks:
    layers = groups[0].layers
    masks: ChannelMasks = {}
    for index, group in enumerate(groups):
        for member in group.members:
            key = IN_MASK if member.role == "in" else OUT_MASK
            entry = masks.setdefault(member.name, {})
            if key not in entry:
                info = layers.get(member.name)
                start = (
                    None if info is None else (info.in_mask if key == IN_MASK else info.out_mask)
                )
                entry[key] = (
                    torch.tensor(start, dtype=torch.bool)
                    if start is not None
                    else torch.ones(member.mask_size, dtype=torch.bool)
                )
            for position, channel in zip(member.positions, member.channels):
                if channel in removed[index]:
                    entry[key][position] = False
    return masks


def apply_masks(model: nn.Module, masks: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """Set the channel masks on the model's modules (in place).

    Adapter layers get their `out_mask` / `in_mask` buffers overwritten. Every other module
    (norms, the head, excluded layers) gets a hook mask (see `spa.pruning.module_masks`), so a
    removed channel contributes nothing anywhere: the masked model computes exactly what the
    compacted model computes. A bare per-channel parameter (a member with role "param", keyed
    by its dotted path) gets a mask that `compact` slices it with.

    Args:
        model: the adapted model the masks were computed for.
        masks: from `compute_masks`.

    Raises:
        ConfigError: if a module or parameter path is unknown or a mask has the wrong length.
    """
    axes = None  # the family's sliced tensors, looked up once a bare tensor is masked
    for name, entry in masks.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            axes = sliced_tensor_axes(model) if axes is None else axes
            _apply_parameter_mask(model, name, entry, axes.get(name))
            continue
        for key, mask in entry.items():
            if isinstance(module, ChannelMasked):
                target = getattr(module, key)
                if target.shape != mask.shape:
                    raise ConfigError(
                        f"apply_masks: {name}.{key} has {target.numel()} channels, the mask has "
                        f"{mask.numel()}; were the masks computed for another (compacted) model?"
                    )
                target.copy_(mask.to(target.device))
            else:
                set_module_mask(module, "in" if key == IN_MASK else "out", mask.clone())


def _apply_parameter_mask(
    model: nn.Module, name: str, entry: Mapping[str, torch.Tensor], dim: int | None
) -> None:
    """Record the mask of a bare per-channel parameter or buffer (group member role "param")
    on its channel axis `dim` (None: `parameter_dim`)."""
    owner_name, _, attr = name.rpartition(".")
    try:
        owner = model.get_submodule(owner_name)
        parameter = {**owner._buffers, **owner._parameters}[attr]
    except (AttributeError, KeyError):
        raise ConfigError(f"apply_masks: the model has no module or parameter {name!r}") from None
    mask = entry.get(OUT_MASK)
    dim = parameter_dim(parameter) if dim is None else dim
    size = parameter.shape[dim]
    if mask is None or mask.numel() != size:
        got = None if mask is None else mask.numel()
        raise ConfigError(
            f"apply_masks: parameter {name} has {size} channels, the mask has {got}; were the "
            "masks computed for another (compacted) model?"
        )
    set_parameter_mask(owner, attr, mask.clone(), dim)
