"""Recovery after pruning: distillation from the unpruned model (issue 25).

`DistillConfig` says how much the student follows the teacher (KL on logits at a temperature,
optionally hidden-state matching); `Teacher` is the unpruned adapted model kept as a snapshot
of its task tensors only (the frozen base weights are shared, never copied); `Distiller` adds
the distillation terms to a training loss.
"""

from spa.recovery.distill import DistillConfig, Distiller, kl_to_teacher
from spa.recovery.teacher import Teacher

__all__ = ["DistillConfig", "Distiller", "Teacher", "kl_to_teacher"]
