"""Adapter-rank allocation: per-layer SPLoRA ranks chosen by importance under a total budget.

The paper fixes one rank for every layer (§3.4 notes that layers differ in what they need);
AdaLoRA and APT instead spend a total rank budget where it matters. Here every rank-1
component `i` of a layer (`down[:, i] up[i, :]`) gets an importance score, scores are
normalised per layer (so layers compete on relative importance, as the channel ranking does),
and the `budget` most important components over all layers are kept, at least `min_rank` per
layer. Start wider than the target (e.g. rank 16 for an average of 8) to let important layers
keep more than the average (growth relative to a fixed rank) while others give components up.
`set_ranks` slices the factors in place: the layers stay ordinary `SPLoRALayer`s of different
ranks, which bundles (`rank` per layer entry), dParams (`r_l (||m_row||_0 + ||m_col||_0)`) and
`TaskHost` already handle. The fixed rank stays the default: nothing changes unless called.

Importance:
- "magnitude": `||down[:, i] * m_row|| * ||up[i, :] * m_col||`, the Frobenius norm of the
  component's masked rank-1 term.
- "taylor": `|sum(grad * value)|` over the component's entries of both factors (first-order
  estimate of the loss change when it is removed; needs gradients from a backward pass).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from spa.adapters.protocols import adapter_layers
from spa.errors import ConfigError

Importance = Literal["magnitude", "taylor"]


@dataclass(frozen=True, kw_only=True)
class RankAllocationConfig:
    """Whether and how SPLoRA ranks are reallocated before the first pruning step.

    Args:
        budget: fraction of the total rank (sum over layers at the adapter's rank) to keep,
            in (0, 1]; None keeps every layer at the fixed rank (the paper's, the default).
        importance: "magnitude" (the only one the runner uses: no extra backward pass).
        min_rank: every layer keeps at least this rank (>= 1).
    """

    budget: float | None = None
    importance: Literal["magnitude"] = "magnitude"
    min_rank: int = 1

    def __post_init__(self) -> None:
        if self.budget is not None and not 0 < self.budget <= 1:
            raise ConfigError(f"ranks.budget must be in (0, 1] or omitted, got {self.budget!r}")
        if self.importance != "magnitude":
            raise ConfigError(f"ranks.importance must be 'magnitude', got {self.importance!r}")
        if not isinstance(self.min_rank, int) or self.min_rank < 1:
            raise ConfigError(f"ranks.min_rank must be an integer >= 1, got {self.min_rank!r}")

    def allocate(self, model: nn.Module) -> dict[str, int]:
        """Reallocate `model`'s ranks in place (no-op without a budget); return the ranks."""
        if self.budget is not None:
            current = ranks(model)
            total = sum(current.values())
            floor = sum(min(self.min_rank, rank) for rank in current.values())
            budget = max(floor, round(self.budget * total))
            scores = rank_importance(model, self.importance)
            set_ranks(model, allocate_ranks(scores, budget, self.min_rank))
        return ranks(model)


def _low_rank_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {
        name: layer
        for name, layer in adapter_layers(model)
        if getattr(layer, "rank", 0) > 0 and hasattr(layer, "down") and hasattr(layer, "up")
    }


def rank_importance(
    model: nn.Module, importance: Importance = "magnitude"
) -> dict[str, torch.Tensor]:
    """Per SPLoRA layer, one importance score per rank component.

    Args:
        model: a model adapted with SPLoRA (masks are honoured).
        importance: "magnitude" or "taylor" (the factors' `.grad` must be populated).

    Returns:
        Layer path -> scores of shape `(rank,)`.

    Raises:
        ConfigError: for an unknown importance, or "taylor" without gradients.
    """
    if importance not in ("magnitude", "taylor"):
        raise ConfigError(f"rank importance must be 'magnitude' or 'taylor', got {importance!r}")
    scores = {}
    with torch.no_grad():
        for name, layer in _low_rank_layers(model).items():
            down, up = layer.masked_factors()  # (out, r), (r, in/groups)
            if importance == "magnitude":
                scores[name] = down.norm(dim=0) * up.norm(dim=1)
                continue
            if layer.down.grad is None or layer.up.grad is None:
                raise ConfigError(
                    f"{name}: rank importance 'taylor' needs gradients; run a backward pass first"
                )
            down_term = (layer.down.grad * down).sum(dim=0)
            up_term = (layer.up.grad * up).sum(dim=1)
            scores[name] = (down_term + up_term).abs()
    return scores


def allocate_ranks(
    scores: Mapping[str, torch.Tensor], budget: int, min_rank: int = 1
) -> dict[str, list[int]]:
    """Choose which rank components every layer keeps: the `budget` most important overall.

    Args:
        scores: from `rank_importance`.
        budget: total rank kept over all layers (sum of the per-layer ranks).
        min_rank: every layer keeps at least this many components (>= 1).

    Returns:
        Layer path -> sorted indices of the kept components.

    Raises:
        ConfigError: if the budget is below `min_rank` per layer or above the current total.
    """
    if min_rank < 1:
        raise ConfigError(f"min_rank must be >= 1, got {min_rank!r}")
    total = sum(int(value.numel()) for value in scores.values())
    floor = sum(min(min_rank, int(value.numel())) for value in scores.values())
    if not floor <= budget <= total:
        raise ConfigError(
            f"rank budget must be between {floor} ({min_rank} per layer) and the current "
            f"total rank {total}, got {budget}"
        )
    kept: dict[str, list[int]] = {}
    candidates = []
    for name, value in scores.items():
        relative = value.double() / value.double().sum().clamp_min(1e-30)  # per-layer normalised
        order = torch.argsort(relative, descending=True).tolist()
        floor_count = min(min_rank, len(order))
        kept[name] = order[:floor_count]
        candidates += [(float(relative[i]), name, i) for i in order[floor_count:]]
    candidates.sort(key=lambda item: (-item[0], item[1], item[2]))
    for _, name, index in candidates[: budget - floor]:
        kept[name].append(index)
    return {name: sorted(indices) for name, indices in kept.items()}


def set_ranks(model: nn.Module, kept: Mapping[str, list[int]]) -> None:
    """Keep only the given rank components of every listed SPLoRA layer (in place).

    The factors become new, smaller parameters (rebuild the optimiser afterwards).

    Args:
        model: the SPLoRA-adapted model.
        kept: layer path -> component indices to keep (from `allocate_ranks`).

    Raises:
        ConfigError: for an unknown layer, an empty or out-of-range index list.
    """
    layers = _low_rank_layers(model)
    for name, indices in kept.items():
        if name not in layers:
            raise ConfigError(f"set_ranks: {name!r} is not a SPLoRA layer with a rank > 0")
        layer = layers[name]
        if not indices or min(indices) < 0 or max(indices) >= layer.rank:
            raise ConfigError(
                f"set_ranks: {name}: indices must be non-empty and in [0, {layer.rank}), got "
                f"{list(indices)}"
            )
        index = torch.tensor(list(indices), device=layer.down.device)
        trains = layer.down.requires_grad
        with torch.no_grad():
            down = layer.down.index_select(1, index).clone()  # (out, r')
            up = layer.up.index_select(0, index).clone()  # (r', in/groups)
        layer.down = nn.Parameter(down, requires_grad=trains)
        layer.up = nn.Parameter(up, requires_grad=trains)
        layer.rank = len(indices)


def ranks(model: nn.Module) -> dict[str, int]:
    """Each SPLoRA layer's current rank."""
    return {name: layer.rank for name, layer in _low_rank_layers(model).items()}
