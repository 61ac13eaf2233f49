"""The task-type seam: what the runner needs from a kind of task (data, loss, metric, deployable
model), behind one interface, and the registry the runner picks a task type from.

A task type is registered once, by name, in `TASK_TYPES`; it names the data sets it runs
(`data_names`), and the runner uses the one task type that lists `config.data.name`. The runner
sequences the steps (train blocks, pruning targets, resume, records, bundles, tables); the task
type's `SeedSession` does the work of each stage for one seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from spa._registry import Registry
from spa.errors import ConfigError
from spa.experiments.config import ExperimentConfig


@dataclass(frozen=True)
class Step:
    """One step of a seed's run: train a block of epochs at (or towards) a target density.

    Args:
        index: step index (0 = the unpruned step of an iterative schedule).
        target_density: the density the step prunes to.
        epochs: epochs trained in this step.
        first_epoch: global index of the step's first epoch (for data order).
    """

    index: int
    target_density: float
    epochs: int
    first_epoch: int


@dataclass(frozen=True)
class Evaluation:
    """A task model's result on the evaluation set.

    Args:
        metric: the task's headline metric: a fraction for accuracy (and F1 / 100), or a
            value in its own unit for metrics the report shows unscaled (perplexity).
        loss: mean evaluation loss (None when the task type has none).
        extras: further record fields, e.g. `exact_match` and `f1` in percent.
    """

    metric: float
    loss: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class SeedSession(Protocol):
    """One seed's data, base model, adapted task model, optimiser and pruner (built by a task
    type); the runner calls its stages in order.

    Attributes:
        model: the adapted task model the run trains (checkpointed, synchronised across ranks).
    """

    model: nn.Module

    def prune(self, step: Step) -> None:
        """Prune to `step.target_density` before the step's training (iterative schedules)."""
        ...

    def train_epoch(self, step: Step, epoch: int) -> dict[str, Any]:
        """Train one epoch (`epoch` within `step`); return record fields (`lr`, `loss`, ...)."""
        ...

    def finish_training(self, step: Step) -> None:
        """Called after the step's last epoch (e.g. to fix a gradual schedule's final masks)."""
        ...

    def evaluate(self) -> Evaluation:
        """The metric of the current task model on the evaluation set (every rank calls it)."""
        ...

    def deploy(self, bundle_path: Path) -> dict[str, Any]:
        """Fuse and compact a copy of the task model, measure it, save its bundle; return the
        record fields `density`, `dparams`, `params`, `flops`, `macs`, the latency fields and
        `bundle_bytes` (rank 0 only)."""
        ...

    def checkpoint_state(self) -> dict[str, Any] | None:
        """What to checkpoint after a step (model, optimiser, masks), or None for no checkpoint
        (the seed then resumes from its last finished step's records only)."""
        ...

    def restore(self, state: dict[str, Any]) -> None:
        """Restore a state returned by `checkpoint_state` (after a restart)."""
        ...


@dataclass(frozen=True)
class Capabilities:
    """What a task type runs, as data; `unsupported_reason` words every mismatch.

    Args:
        models: what the task type runs, as messages name it (e.g. "image models").
        pruning: what its adapter kinds may prune (`AdapterKind.pruning`: "channel",
            "block", "none").
        schedules: the `pruning.schedule` values it runs.
    """

    models: str
    pruning: tuple[str, ...]
    schedules: tuple[str, ...]


class TaskType(Protocol):
    """A kind of task the runner can run (classification, extractive QA, causal LM, ...).

    Attributes:
        name: registry name, e.g. "classification".
        metric_name: name of the headline metric stored in records, e.g. "accuracy", "f1" or
            "perplexity".
        supports_distributed: whether runs may be launched with `torchrun`.
        capabilities: the adapter kinds (by what they prune) and schedules it runs.
    """

    name: str
    metric_name: str
    supports_distributed: bool
    capabilities: Capabilities

    def data_names(self) -> tuple[str, ...]:
        """The `data.name` values this task type runs."""
        ...

    def config_problem(self, config: ExperimentConfig) -> str | None:
        """What else in `config` this task type cannot run (naming the key), or None; the
        adapter kind and schedule are checked against `capabilities` first."""
        ...

    def start(self, config: ExperimentConfig, seed: int) -> SeedSession:
        """Build the seed's data, models, optimiser and pruner (global RNGs already seeded)."""
        ...


TASK_TYPES: Registry[TaskType] = Registry("task type")


def task_type_for(config: ExperimentConfig) -> TaskType:
    """The registered task type that runs `config.data.name`.

    Raises:
        ConfigError: if no task type (or more than one) lists the data set; the message names
            `data.name` and the known data sets.
    """
    matches = [
        TASK_TYPES.get(name)
        for name in TASK_TYPES
        if config.data.name in TASK_TYPES.get(name).data_names()
    ]
    if len(matches) == 1:
        return matches[0]
    if matches:
        names = ", ".join(task_type.name for task_type in matches)
        raise ConfigError(
            f"config key 'data.name' = {config.data.name!r}: claimed by several task types "
            f"({names}); register each data set with one task type"
        )
    known = sorted({data for name in TASK_TYPES for data in TASK_TYPES.get(name).data_names()})
    raise ConfigError(
        f"config key 'data.name': unknown dataset {config.data.name!r}; known: {', '.join(known)}"
    )


def plan_steps(config: ExperimentConfig) -> list[Step]:
    """The steps of one seed for the config's pruning schedule.

    "iterative" / "none": step 0 trains `initial_epochs` unpruned, then each density of
    `pruning.density_steps()` is one step of `epochs_per_step`. "gradual": one step (index 1)
    trains `initial_epochs + epochs_per_step` epochs while the pruner follows the cubic schedule
    down to `target_density`.
    """
    train = config.train
    if config.pruning.schedule == "gradual":
        epochs = train.initial_epochs + train.epochs_per_step
        return [Step(1, config.pruning.target_density, epochs, 0)]
    steps = [Step(0, 1.0, train.initial_epochs, 0)]
    for index, target in enumerate(config.pruning.density_steps(), start=1):
        first = train.initial_epochs + (index - 1) * train.epochs_per_step
        steps.append(Step(index, target, train.epochs_per_step, first))
    return steps


def not_supported(
    key: str, value: object, models: str, allowed: list[str] | tuple[str, ...]
) -> str:
    """The one wording of "`spa run` does not run this": the key, its value, what the task
    type runs and the values it accepts instead."""
    return (
        f"config key {key!r} = {value!r}: not supported for {models} by `spa run`; "
        f"use one of {', '.join(map(repr, allowed))}"
    )


def unsupported_reason(task_type: TaskType, config: ExperimentConfig) -> str | None:
    """Why `task_type` cannot run `config` (naming the key), or None if it can: its
    `capabilities` first, then its own `config_problem`."""
    from spa.experiments.presets import kinds_pruning

    capabilities = task_type.capabilities
    if config.adapter.pruning not in capabilities.pruning:
        allowed = kinds_pruning(capabilities.pruning)
        return not_supported("adapter.kind", config.adapter.kind, capabilities.models, allowed)
    if config.pruning.schedule not in capabilities.schedules:
        schedule = config.pruning.schedule
        return not_supported(
            "pruning.schedule", schedule, capabilities.models, capabilities.schedules
        )
    return task_type.config_problem(config)
