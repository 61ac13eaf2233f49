"""Channel pruning: coupled groups, criteria, masks, compaction and the iterative schedule.

Data flow: `channel_groups(model, example_inputs)` -> `score(model, criterion, groups, data)`
-> `compute_masks(groups, scores, density)` -> `apply_masks(model, masks)` -> train ->
`compact(model)` -> `spa.fuse`. `iterative_prune` runs the whole loop. Targets are a parameter
density (the paper's default) or, with `macs_profile`, a fraction of the model's MACs/FLOPs.
`rank_scores` (config `cost`) divides scores by the weights or MACs a channel costs.
"""

from spa.pruning.budget import MacsProfile, flops_profile, macs_profile
from spa.pruning.channel_group import ChannelGroup, GroupMember, LayerInfo, refresh_groups
from spa.pruning.compaction import compact
from spa.pruning.config import ChannelPruningConfig
from spa.pruning.cost import channel_costs, rank_scores
from spa.pruning.criteria import CRITERIA, normalise, score
from spa.pruning.empty_units import UnitRemoval, remove_empty_units, without_empty_units
from spa.pruning.groups import channel_groups, remove_channels
from spa.pruning.iterative import iterative_prune, prune_step
from spa.pruning.lrp import Relevance, lrp
from spa.pruning.masking import ChannelMasks, apply_masks, compute_masks
from spa.pruning.plan import Plan, UnitPlan, plan
from spa.pruning.schedules import (
    IterativeSchedule,
    iterative_densities,
    paper_lr_factor,
    paper_optimizer,
    paper_scheduler,
)
from spa.pruning.units import DEFAULT_UNITS, UNITS, unit_groups

__all__ = [
    "CRITERIA",
    "ChannelGroup",
    "ChannelMasks",
    "ChannelPruningConfig",
    "GroupMember",
    "IterativeSchedule",
    "LayerInfo",
    "MacsProfile",
    "Plan",
    "Relevance",
    "apply_masks",
    "channel_costs",
    "channel_groups",
    "compact",
    "compute_masks",
    "iterative_densities",
    "iterative_prune",
    "lrp",
    "flops_profile",
    "macs_profile",
    "normalise",
    "paper_lr_factor",
    "paper_optimizer",
    "paper_scheduler",
    "plan",
    "prune_step",
    "rank_scores",
    "refresh_groups",
    "remove_channels",
    "remove_empty_units",
    "score",
    "unit_groups",
    "without_empty_units",
    "DEFAULT_UNITS",
    "UNITS",
    "UnitPlan",
    "UnitRemoval",
]
