"""Iterative channel pruning: train, remove a fixed fraction of the weights, train again, ...

Pruning steps only set masks (no compaction), so the training step keeps its parameters and
the same code path serves fine-pruning (all weights train) and SPLoRA (adapter factors, norms
and head train). Compact with `spa.compact` for deployment, e.g. in the per-density hook on a
copy of the model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from torch import nn

from spa.errors import ConfigError
from spa.flops import density as measured_density
from spa.pruning.budget import MacsProfile, flops_profile
from spa.pruning.config import ChannelPruningConfig
from spa.pruning.cost import rank_scores
from spa.pruning.criteria import Statistics, score
from spa.pruning.groups import ChannelGroup, channel_groups, refresh_groups
from spa.pruning.masking import ChannelMasks, apply_masks, compute_masks

logger = logging.getLogger(__name__)

TrainFn = Callable[[nn.Module, int], object]
HookFn = Callable[[nn.Module, float, int], object]


def prune_step(
    model: nn.Module,
    groups: list[ChannelGroup],
    density: float,
    config: ChannelPruningConfig,
    data: Iterable | None = None,
    loss_fn: Callable | None = None,
    reduce_fn: Callable[[Statistics], Statistics] | None = None,
    macs: MacsProfile | None = None,
    output_fn: Callable | None = None,
) -> ChannelMasks:
    """Score the groups, choose masks for `density` and apply them to `model`.

    Args:
        model: the adapted model.
        groups: its channel groups (current masks are re-read).
        density: target retained-weight density (or MACs fraction with target "flops").
        config: criterion, ranking, floors and rounding.
        data: batches for data-based criteria.
        loss_fn: loss for gradient-based criteria.
        reduce_fn: hook to all-reduce criterion statistics before ranking.
        macs: the model's `MacsProfile`; required when `config.target == "flops"` (the
            compute budget) or `config.cost == "macs"` (MACs-normalised ranking).
        output_fn: what the criteria read from the model's output (see `score`).

    Returns:
        The masks applied.

    Raises:
        ConfigError: if the config needs a MACs profile and none is given.
    """
    if config.needs_macs_profile and macs is None:
        raise ConfigError(
            f"prune_step: config.target={config.target!r} with config.cost={config.cost!r} "
            "needs a MACs profile: pass macs=spa.pruning.flops_profile(model, groups, "
            "example_inputs)"
        )
    groups = refresh_groups(model, groups)
    scores = score(
        model,
        config.criterion,
        groups,
        data=data,
        loss_fn=loss_fn,
        output_fn=output_fn,
        num_batches=config.num_batches,
        reduce_fn=reduce_fn,
        norm_p=config.norm_p,
        lrp_rule=config.lrp_rule,
        lrp_epsilon=config.lrp_epsilon,
    )
    masks = compute_masks(
        groups,
        rank_scores(groups, scores, config.cost, macs),
        density,
        ranking=config.ranking,
        min_channels=config.min_channels,
        min_fraction=config.min_fraction,
        round_to=config.round_to,
        macs=macs if config.target == "flops" else None,
    )
    apply_masks(model, masks)
    return masks


def iterative_prune(
    model: nn.Module,
    train: TrainFn,
    example_inputs,
    config: ChannelPruningConfig | None = None,
    data: Iterable | None = None,
    loss_fn: Callable | None = None,
    hook: HookFn | None = None,
    reduce_fn: Callable[[Statistics], Statistics] | None = None,
) -> nn.Module:
    """Train `initial_epochs`, then per scheduled density: prune, train, call `hook`.

    Args:
        model: an adapted model (SPLoRA or fine-pruning); modified in place.
        train: `train(model, epochs)`, the injectable training step (it builds its optimizer,
            e.g. `paper_optimizer` + `paper_scheduler`).
        example_inputs: a batch for tracing the channel groups.
        config: criterion, ranking, floors, rounding and `schedule`; default weight criterion,
            global ranking, 5% steps to 5% density.
        data: batches for data-based criteria.
        loss_fn: loss for gradient-based criteria.
        hook: `hook(model, density, step_index)` after training at every density, where
            `density` is the scheduled one (`spa.density(model)` gives the measured one).
        reduce_fn: hook to all-reduce criterion statistics before ranking.

    Returns:
        `model`, masked at the final density.
    """
    config = config or ChannelPruningConfig()
    schedule = config.schedule
    if schedule.initial_epochs:
        train(model, schedule.initial_epochs)
    groups = channel_groups(model, example_inputs, units=config.units)
    macs = flops_profile(model, groups, example_inputs) if config.needs_macs_profile else None
    for index, target in enumerate(schedule.densities()):
        prune_step(model, groups, target, config, data, loss_fn, reduce_fn, macs)
        logger.info(
            "density step %d: target %.3f, reached %.3f", index, target, measured_density(model)
        )
        if schedule.epochs_per_step:
            train(model, schedule.epochs_per_step)
        if hook is not None:
            hook(model, target, index)
    return model
