"""Task types of `spa run`: classification, extractive QA and causal LM behind one interface.

A new task type implements `TaskType` / `SeedSession` (see `base`) in one module, declares its
`Capabilities` as data, and registers an instance in `TASK_TYPES`; the runner picks it by
`data.name` and checks a config with `unsupported_reason`.
"""

from spa.experiments.task_types import causal_lm, classification, extractive_qa
from spa.experiments.task_types.base import (
    TASK_TYPES,
    Capabilities,
    Evaluation,
    SeedSession,
    Step,
    TaskType,
    not_supported,
    plan_steps,
    task_type_for,
    unsupported_reason,
)

__all__ = [
    "TASK_TYPES",
    "Capabilities",
    "Evaluation",
    "SeedSession",
    "Step",
    "TaskType",
    "causal_lm",
    "classification",
    "extractive_qa",
    "not_supported",
    "plan_steps",
    "task_type_for",
    "unsupported_reason",
]
