"""Recovery after pruning: distillation from the unpruned model (issue 25).

`DistillConfig` says how much the student follows the teacher (KL on logits at a temperature,
optionally hidden-state matching); `Teacher` is the unpruned adapted model kept as a snapshot
of its task tensors only (the frozen base weights are shared, never copied); `Distiller` adds
the distillation terms to a training loss. `rank_importance` / `allocate_ranks` / `set_ranks`
spend a total SPLoRA rank budget where it matters (heterogeneous per-layer ranks).
"""

from spa.recovery.distill import DistillConfig, Distiller, kl_to_teacher
from spa.recovery.ranks import (
    RankAllocationConfig,
    allocate_ranks,
    rank_importance,
    ranks,
    set_ranks,
)
from spa.recovery.teacher import Teacher

__all__ = [
    "DistillConfig",
    "Distiller",
    "RankAllocationConfig",
    "Teacher",
    "allocate_ranks",
    "kl_to_teacher",
    "rank_importance",
    "ranks",
    "set_ranks",
]
