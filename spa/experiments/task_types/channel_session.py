"""What the channel-pruning task types' seed sessions share: the iterative schedule's finish, the
deployable model and bundle, and checkpoints that carry the channel masks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from spa.experiments import measure
from spa.experiments.task_types.base import Step
from spa.experiments.train import (
    block_learning_rate,
    make_loader,
    make_optimizer,
    set_learning_rate,
    wrap_model,
)
from spa.recovery import Distiller, Teacher, ranks, set_ranks


@dataclass
class Epoch:
    """What one training epoch of a channel session runs with.

    Args:
        training: the module to train (DDP-wrapped in a distributed run).
        loader: this epoch's seeded, shuffled loader (each rank's share of every global batch).
        lr: the learning rate set on the optimiser for this epoch.
        description: the progress label.
    """

    training: nn.Module
    loader: Any
    lr: float
    description: str


class ChannelSessionSteps:
    """Mixin for a `SeedSession` dataclass with the fields `config`, `seed`, `model`, `base`,
    `example`, `optimizer`, `pruner` (a `ChannelPruner` or None), `model_name`,
    `model_options` (the base's `spa.models` name and builder arguments, for bundles) and
    `training` (None until the first epoch wraps the model) and `teacher` (None until the first
    pruning step when `distill` is on)."""

    def take_teacher(self, step: Step) -> None:
        """Before the first pruning step: reallocate the SPLoRA ranks (`[ranks]`) and keep the
        unpruned adapted model as the teacher (a snapshot of its task tensors; the base weights
        stay shared)."""
        if step.index == 1 and self.config.ranks.budget is not None:
            self.config.ranks.allocate(self.model)
            self._new_optimizer()
        if self.config.distill.is_active and step.index >= 1 and self.teacher is None:
            self.teacher = Teacher(self.model)

    def _new_optimizer(self) -> None:
        """A fresh optimiser (and wrapper) over the model's parameters after they changed."""
        train = self.config.train
        self.optimizer = make_optimizer(
            self.model, train.optimizer, train.lr, train.momentum, train.weight_decay
        )
        self.training = None

    @contextmanager
    def distillation(self) -> Iterator[Distiller | None]:
        """The epoch's distillation (None before the teacher exists or when it is off); its
        hidden-state hooks are removed afterwards."""
        if self.teacher is None or not self.config.distill.is_active:
            yield None
            return
        distiller = Distiller(self.config.distill, self.teacher, self.model)
        try:
            yield distiller
        finally:
            distiller.close()

    def start_epoch(self, step: Step, epoch: int, train_set: Any) -> Epoch:
        """Wrap the model once (pruning only changes masks), set the epoch's learning rate on
        the paper's per-block schedule and make its sharded loader over `train_set`."""
        if self.training is None:
            self.training = wrap_model(self.model, self.example)
        train = self.config.train
        lr = block_learning_rate(train.lr, epoch, step.epochs, train.lr_schedule)
        set_learning_rate(self.optimizer, lr)
        loader = make_loader(
            train_set,
            self.config.data.batch_size,
            shuffle=True,
            seed=self.seed,
            epoch=step.first_epoch + epoch,
            shard=True,
        )
        description = (
            f"seed {self.seed} density {step.target_density:.0%} epoch {epoch + 1}/{step.epochs}"
        )
        return Epoch(self.training, loader, lr, description)

    def run_epoch(
        self, step: Step, epoch: int, train_set: Any, epoch_function: Callable[..., Any]
    ) -> tuple[Any, float]:
        """One epoch of `epoch_function` (`train_epoch` or `train_lm_epoch`) over `train_set`,
        distilled when a teacher exists; returns its result and the epoch's learning rate."""
        run = self.start_epoch(step, epoch, train_set)
        with self.distillation() as distiller:
            result = epoch_function(
                run.training,
                run.loader,
                self.optimizer,
                device=self.config.train.device,
                max_batches=self.config.train.max_batches_per_epoch,
                description=run.description,
                distiller=distiller,
            )
        return result, run.lr

    def finish_training(self, step: Step) -> None:
        """Nothing to do: iterative masks are final when set."""

    def deploy(self, bundle_path: Path) -> dict[str, Any]:
        """Compact and fuse a copy, measure it and save the bundle (`measure_task`)."""
        return measure.measure_task(
            self.model,
            self.base,
            self.example,
            bundle_path,
            self.config.train.latency_batch_size,
            model_name=self.model_name,
            model_options=self.model_options,
            groups=self.pruner.groups if self.pruner is not None else None,
        )

    def checkpoint_state(self) -> dict[str, Any]:
        """Model, optimiser and channel masks (hook masks are not in `state_dict`)."""
        masks = self.pruner.masks() if self.pruner is not None else None
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "masks": masks,
            "teacher": None if self.teacher is None else self.teacher.state,
            "ranks": ranks(self.model),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Load the model and optimiser states and re-apply the channel masks."""
        saved = state.get("ranks") or {}
        if saved and saved != ranks(self.model):  # reallocated: shape the factors first
            set_ranks(self.model, {name: list(range(rank)) for name, rank in saved.items()})
            self._new_optimizer()
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.pruner is not None:
            self.pruner.restore(self.model, state["masks"])
        if state.get("teacher") is not None:
            self.teacher = Teacher.from_state(state["teacher"])
