"""Task types of `spa run`: classification, extractive QA and causal LM behind one interface.

A new task type implements `TaskType` / `SeedSession` (see `base`) in one module and registers
an instance in `TASK_TYPES`; the runner picks it by `data.name`.
"""

from spa.experiments.task_types import causal_lm, classification, extractive_qa
from spa.experiments.task_types.base import (
    TASK_TYPES,
    Evaluation,
    SeedSession,
    Step,
    TaskType,
    plan_steps,
    task_type_for,
)

__all__ = [
    "TASK_TYPES",
    "Evaluation",
    "SeedSession",
    "Step",
    "TaskType",
    "causal_lm",
    "classification",
    "extractive_qa",
    "plan_steps",
    "task_type_for",
]
