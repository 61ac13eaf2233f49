"""spa's pruning schedules inside a `transformers.Trainer`, as one `TrainerCallback`.

Use::

    model = spa.adapt(base_copy, spa.SPLoRAConfig(rank=8))
    callback = SpaPruningCallback(
        ChannelSchedule(densities=(0.8, 0.6), steps_per_density=100),
        base_model=base, output_dir="bundles", example_inputs=batch,
    )
    Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()

At every density of a `ChannelSchedule` the model being trained is scored, masked and (by
default) compacted in place: its pruned channels are removed physically and the optimizer is
kept consistent, its parameter lists pointing at the new parameters and every per-parameter
state tensor (Adam's moments) sliced by the very compaction that sliced its parameter (run on a
copy of the model holding the state). Block schedules only mask (removed blocks are exactly
zero). At the end of every density the task is written as a bundle, and `history` records
what was visited.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from spa.deploy import compacted
from spa.errors import ConfigError
from spa.flops import density as channel_density
from spa.pruning import ChannelPruningConfig, channel_groups, compact, prune_step
from spa.pruning.block_criteria import create_block_criterion
from spa.pruning.gradual import GradualBlockPruner, GradualPruningConfig
from spa.recovery import DistillConfig, Distiller, Teacher
from spa.tasks import save_task

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ChannelSchedule:
    """Iterative channel pruning counted in optimizer steps.

    After `initial_steps`, the model is pruned to each density in turn and trained for
    `steps_per_density` steps at it; a bundle is written at the end of every density.

    Args:
        densities: the densities to visit, strictly decreasing, each in (0, 1].
        steps_per_density: optimizer steps trained at each density (>= 1).
        initial_steps: optimizer steps before the first pruning step (>= 0).
        pruning: criterion, ranking, floors, rounding and target ("params" or "flops").
        scoring_batches: training batches the data-based criteria accumulate over.
        compact: physically remove the pruned channels from the model being trained at every
            density (it trains faster and smaller); the optimizer's parameters and per-parameter
            state (e.g. Adam's moments) are carried over by the same compaction. False keeps
            the shapes (masks only). Single-process training only.
    """

    densities: tuple[float, ...]
    steps_per_density: int
    initial_steps: int = 0
    pruning: ChannelPruningConfig = field(default_factory=ChannelPruningConfig)
    scoring_batches: int = 1
    compact: bool = True

    def __post_init__(self) -> None:
        values = tuple(self.densities)
        if not values or any(not 0 < d <= 1 for d in values):
            raise ConfigError(f"densities must be a non-empty list in (0, 1], got {values!r}")
        if any(b >= a for a, b in zip(values, values[1:])):
            raise ConfigError(f"densities must decrease strictly, got {values!r}")
        for name in ("steps_per_density", "initial_steps", "scoring_batches"):
            value = getattr(self, name)
            low = 0 if name == "initial_steps" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        object.__setattr__(self, "densities", values)

    def total_steps(self) -> int:
        """Optimizer steps the schedule needs (set the Trainer's `max_steps` to at least this)."""
        return self.initial_steps + self.steps_per_density * len(self.densities)


@dataclass(frozen=True, kw_only=True)
class BlockSchedule:
    """Automated gradual block pruning (SPLoPA or block fine-pruning layers).

    Args:
        criterion: a name in `spa.pruning.block_criteria.BLOCK_CRITERIA`.
        gradual: the cubic schedule in optimizer steps.
        criterion_options: keyword arguments of the criterion.
    """

    criterion: str
    gradual: GradualPruningConfig
    criterion_options: dict[str, float] = field(default_factory=dict)

    def total_steps(self) -> int:
        """Optimizer steps the schedule needs."""
        return self.gradual.total_steps


@dataclass
class DensityRecord:
    """One density the callback finished: when, what was targeted and reached, and the bundle."""

    step: int
    target: float
    reached: float
    bundle: str


class SpaPruningCallback(TrainerCallback):
    """Runs an spa pruning schedule during `Trainer.train()` and writes a bundle per density.

    Args:
        schedule: a `ChannelSchedule` (iterative channel pruning of SPLoRA / fine-pruning
            layers) or a `BlockSchedule` (gradual block pruning of SPLoPA / block layers).
        base_model: the plain base model the task was adapted from (for the bundles).
        output_dir: directory for the bundles (`density-<step>.safetensors`).
        example_inputs: a batch for tracing channel groups and checking compaction (a tensor,
            tuple, or dict of keyword arguments without labels); needed for channel schedules.
        loss_fn: `loss_fn(output_fn(outputs), labels)` for data-based criteria; by default the
            model's own `outputs.loss` (the Trainer's batches carry their labels).
        output_fn: what the criteria read from the model's output (see `spa.pruning.score`);
            by default the whole output with the default loss (it holds the loss), else the
            prediction (`.logits`). Criterion "lrp" needs the prediction: pass
            `output_fn=lambda outputs: outputs.logits` for it.
        save_options: extra keyword arguments of `spa.save_task` (e.g. `dtype`).
        distill: distillation during recovery (`spa.recovery.DistillConfig`): the model's
            training loss (`outputs.loss`) becomes the recovery loss with the teacher's logits.
        teacher: the teacher model; None uses the unpruned adapted model itself, kept as a
            snapshot of its task tensors when pruning starts (base weights shared), which needs
            `ChannelSchedule(compact=False)` (compaction changes the shapes).

    Raises:
        ConfigError: for an unknown schedule type, a channel schedule without inputs, or
            distillation from the model itself with compaction.
    """

    def __init__(
        self,
        schedule: ChannelSchedule | BlockSchedule,
        *,
        base_model: nn.Module,
        output_dir: str | os.PathLike,
        example_inputs: Any = None,
        loss_fn: Callable | None = None,
        output_fn: Callable | None = None,
        save_options: dict[str, Any] | None = None,
        distill: DistillConfig | None = None,
        teacher: nn.Module | None = None,
    ) -> None:
        if not isinstance(schedule, ChannelSchedule | BlockSchedule):
            raise ConfigError(
                f"schedule must be a ChannelSchedule or BlockSchedule, got {type(schedule)}"
            )
        if isinstance(schedule, ChannelSchedule) and example_inputs is None:
            raise ConfigError("a ChannelSchedule needs example_inputs to trace channel groups")
        self.distill = distill if distill is not None and distill.is_active else None
        compacts = isinstance(schedule, ChannelSchedule) and schedule.compact
        if self.distill is not None and teacher is None and compacts:
            raise ConfigError(
                "distillation from the model itself needs ChannelSchedule(compact=False) "
                "(compaction changes its shapes); or pass teacher=<a separate model>"
            )
        self._teacher_model = teacher
        self._distiller: Distiller | None = None
        self.teacher: Teacher | None = None  # set when distillation starts
        self.schedule = schedule
        self.base_model = base_model
        self.output_dir = Path(output_dir)
        self.example_inputs = example_inputs
        self.loss_fn = loss_fn or _model_loss
        if output_fn is None and loss_fn is None:
            output_fn = _whole_output
        self.output_fn = output_fn
        self.save_options = dict(save_options or {})
        self.history: list[DensityRecord] = []
        self._groups = None
        self._pruner: GradualBlockPruner | None = None
        self._level = -1  # index of the density the model is masked at (-1: unpruned)

    # -- Trainer events --------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        """Build the channel groups (pruning at once without initial steps), or attach the
        block criterion."""
        self._check_steps(args)
        if isinstance(self.schedule, ChannelSchedule):
            self._groups = self._channel_groups(model)
            if self.schedule.initial_steps == 0 and state.global_step == 0:
                self._prune(model, self.schedule.densities[0], train_dataloader)
                if self.schedule.compact:
                    self._compact(model, kwargs.get("optimizer"), args)
                self._level = 0
        else:
            criterion = create_block_criterion(
                self.schedule.criterion, **self.schedule.criterion_options
            )
            self._pruner = GradualBlockPruner(model, criterion, self.schedule.gradual)
            self._start_distillation(model)
        return control

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        """Add the block criterion's penalty gradient (soft movement, L0) to its scores."""
        if self._pruner is not None:
            penalty = self._pruner.penalty()
            if penalty.requires_grad:
                penalty.backward()
        return control

    def on_step_end(
        self, args, state, control, model=None, train_dataloader=None, optimizer=None, **kwargs
    ):
        """Advance the schedule: update block scores, or prune (and compact) / save at density
        boundaries."""
        if self._pruner is not None:
            self._pruner.step()
            return control
        schedule = self.schedule
        done = state.global_step - schedule.initial_steps
        if done < 0 or done % schedule.steps_per_density:
            return control
        level = done // schedule.steps_per_density
        if level <= self._level or self._level >= len(schedule.densities):
            return control  # pruned at this boundary already, or the schedule is finished
        if self._level >= 0:
            self._save(model, state.global_step, schedule.densities[self._level])
        if level < len(schedule.densities):
            self._prune(model, schedule.densities[level], train_dataloader)
            if schedule.compact:
                self._compact(model, optimizer, args)
        self._level = level
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        """Finish the block schedule and write its bundle; remove the distillation hooks."""
        if self._distiller is not None:
            self._distiller.close()
            self._distiller = None
        if self._pruner is not None:
            self._pruner.finish()
            target = self.schedule.gradual.final_density
            self._save(model, state.global_step, target, reached=self._pruner.density())
            self._pruner = None
        return control

    # -- helpers ---------------------------------------------------------------------------------
    def _check_steps(self, args) -> None:
        needed = self.schedule.total_steps()
        if args.max_steps is not None and 0 < args.max_steps < needed:
            raise ConfigError(
                f"the pruning schedule needs {needed} optimizer steps but max_steps is "
                f"{args.max_steps}; raise max_steps or shorten the schedule"
            )

    def _start_distillation(self, model: nn.Module) -> None:
        """Take the teacher (once, before the first pruning) and hook the recovery loss in."""
        if self.distill is None or self._distiller is not None:
            return
        if self._teacher_model is not None:
            teacher = Teacher(self._teacher_model, snapshot=False)
        else:
            teacher = Teacher(model)
        self.teacher = teacher
        self._distiller = Distiller(self.distill, teacher, model)
        self._distiller.install_loss_hook(model)

    def _prune(self, model: nn.Module, density: float, loader: Iterable | None) -> None:
        self._start_distillation(model)
        schedule = self.schedule
        data = _batches(loader, schedule.scoring_batches, model) if loader is not None else None
        macs = None
        if schedule.pruning.needs_macs_profile:
            from spa.pruning.budget import flops_profile

            macs = flops_profile(model, self._groups, self.example_inputs)
        training = model.training
        prune_step(
            model,
            self._groups,
            density,
            schedule.pruning,
            data,
            self.loss_fn,
            macs=macs,
            output_fn=self.output_fn,
        )
        model.train(training)
        logger.info("pruned to density %.3f (reached %.3f)", density, channel_density(model))

    def _channel_groups(self, model: nn.Module):
        return channel_groups(model, self.example_inputs, units=self.schedule.pruning.units)

    def _compact(self, model: nn.Module, optimizer: Any, args) -> None:
        if getattr(args, "world_size", 1) > 1:
            raise ConfigError(
                "ChannelSchedule(compact=True) changes parameter shapes, which distributed "
                "training cannot follow; pass compact=False for multi-process training"
            )
        compact_with_optimizer(model, optimizer)
        self._groups = self._channel_groups(model)  # the new, smaller channels
        logger.info("compacted: %d parameters", sum(p.numel() for p in model.parameters()))

    def _save(self, model: nn.Module, step: int, target: float, reached: float | None = None):
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / f"density-{step:06d}.safetensors"
        training = model.training
        model.eval()
        try:
            task = compacted(model, self.example_inputs)
            save_task(task, path, base_model=self.base_model, **self.save_options)
        finally:
            model.train(training)
        if reached is None:
            reached = channel_density(model)
        self.history.append(DensityRecord(step, target, reached, str(path)))
        logger.info("step %d: density %.3f, bundle %s", step, reached, path)


def compact_with_optimizer(model: nn.Module, optimizer: Any = None) -> nn.Module:
    """`spa.compact(model)` in place, carrying `optimizer` over to the compacted parameters.

    Every optimizer state tensor shaped like its parameter (Adam's `exp_avg`, `exp_avg_sq`,
    momentum buffers) is sliced exactly as the parameter is: a copy of the model whose
    parameters hold that state is compacted by the same masks and read back. Parameter groups
    then list the new parameters, in the same order; other state (`step`) is kept.

    Args:
        model: a masked adapted model (channel masks).
        optimizer: a `torch.optim.Optimizer` over (some of) its parameters, or a wrapper with
            an `optimizer` attribute (accelerate's); None compacts the model only.

    Returns:
        `model`, compacted.
    """
    inner = getattr(optimizer, "optimizer", optimizer)
    if inner is None:
        return compact(model)
    names = {id(p): name for name, p in model.named_parameters()}
    old = dict(model.named_parameters())
    keys = {
        key
        for p, values in inner.state.items()
        for key, value in values.items()
        if torch.is_tensor(value) and value.shape == p.shape and value.dim() > 0
    }
    sliced: dict[str, dict[str, torch.Tensor]] = {}
    for key in sorted(keys):
        shadow = copy.deepcopy(model)
        with torch.no_grad():
            for name, parameter in shadow.named_parameters():
                value = inner.state.get(old[name], {}).get(key)
                if torch.is_tensor(value) and value.shape == parameter.shape:
                    parameter.copy_(value)
        compact(shadow)
        sliced[key] = {name: p.detach().clone() for name, p in shadow.named_parameters()}
    compact(model)
    new = dict(model.named_parameters())
    state = {}
    for group in inner.param_groups:
        for index, parameter in enumerate(group["params"]):
            name = names[id(parameter)]
            values = inner.state.get(parameter)
            group["params"][index] = new[name]
            if values:
                state[new[name]] = {
                    key: sliced[key][name] if key in sliced else value
                    for key, value in values.items()
                }
    inner.state.clear()
    inner.state.update(state)
    return model


def _whole_output(outputs: Any) -> Any:
    """The model's output as it is (the default loss reads the loss the model computed)."""
    return outputs


def _model_loss(outputs: Any, labels: Any) -> torch.Tensor:
    """The loss a model computed itself: `outputs["loss"]`, `outputs.loss` or `outputs[0]`."""
    if isinstance(outputs, dict):
        loss = outputs.get("loss")
    elif isinstance(outputs, tuple | list):
        loss = outputs[0] if outputs and outputs[0].dim() == 0 else None
    else:
        loss = getattr(outputs, "loss", None)
    if loss is None:
        raise ConfigError(
            "the model returned no loss for a scoring batch; pass loss_fn=(outputs, labels) -> "
            "loss to SpaPruningCallback"
        )
    return loss


def _batches(loader: Iterable, count: int, model: nn.Module) -> list[tuple[dict, None]]:
    """The first `count` Trainer batches as `(keyword inputs, None)` on the model's device."""
    device = next(model.parameters()).device
    result = []
    for batch in loader:
        if len(result) >= count:
            break
        result.append(({k: _to(v, device) for k, v in batch.items()}, None))
    return result


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device) if isinstance(value, torch.Tensor) else value
