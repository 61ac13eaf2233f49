"""The classification task type: image (or any tensor) classification with channel pruning.

Data: a `spa.data` registry data set of `(inputs, label)`; loss: cross-entropy; metric:
accuracy; deployable model: the compacted, fused copy of the masked task model (`measure_task`).
Pruning follows the iterative schedule (or none): before each step after the first the channels
are scored on the training data and masked down to the step's density.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from spa.experiments import build, measure
from spa.experiments.config import ExperimentConfig
from spa.experiments.distributed_run import prune_on_all_ranks
from spa.experiments.pruning_steps import ChannelPruner
from spa.experiments.task_types.base import TASK_TYPES, Capabilities, Evaluation, Step
from spa.experiments.task_types.channel_session import ChannelSessionSteps
from spa.experiments.train import evaluate, make_loader, make_optimizer, train_epoch
from spa.recovery import Teacher


@dataclass
class ClassificationSession(ChannelSessionSteps):
    """One seed of a classification run (see `SeedSession`)."""

    config: ExperimentConfig
    seed: int
    train_set: Any
    eval_set: Any
    example: torch.Tensor  # (1, C, H, W)
    base: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    pruner: ChannelPruner | None
    model_name: str | None = None  # the base's `spa.models` name, for bundles
    model_options: dict[str, Any] | None = None  # the base's builder arguments, for bundles
    training: nn.Module | None = field(default=None, repr=False)  # DDP wrapper or `model`
    teacher: Teacher | None = field(default=None, repr=False)  # with distillation

    def prune(self, step: Step) -> None:
        """Score the channels on the training data and mask down to the step's density."""
        self.take_teacher(step)
        if step.index == 0 or self.pruner is None:
            return
        scoring = make_loader(
            self.train_set, self.config.data.batch_size, shuffle=False, shard=True
        )
        prune_on_all_ranks(self.model, self.pruner, step.target_density, scoring)

    def train_epoch(self, step: Step, epoch: int) -> dict[str, Any]:
        """One epoch with the paper's per-block learning-rate schedule; returns lr, loss,
        accuracy (on the training batches)."""
        stats, lr = self.run_epoch(step, epoch, self.train_set, train_epoch)
        return {"lr": lr, "loss": stats.loss, "accuracy": stats.accuracy}

    def evaluate(self) -> Evaluation:
        """Accuracy and cross-entropy on the evaluation set."""
        loader = make_loader(self.eval_set, self.config.data.eval_batch_size, shuffle=False)
        result = evaluate(self.model, loader, device=self.config.train.device)
        # The class count gives the report its chance level.
        extras = {"accuracy": result.accuracy, "num_classes": self.eval_set.num_classes}
        return Evaluation(metric=result.accuracy, loss=result.loss, extras=extras)


class ClassificationTask:
    """Classification on the `spa.data` data sets with channel pruning (see `TaskType`)."""

    name = "classification"
    metric_name = "accuracy"
    supports_distributed = True
    capabilities = Capabilities(
        models="image models", pruning=("channel", "none"), schedules=("iterative", "none")
    )

    def data_names(self) -> tuple[str, ...]:
        """Every data set of the `spa.data` registry."""
        from spa.data import DATASETS

        return tuple(DATASETS.names())

    def config_problem(self, config: ExperimentConfig) -> str | None:
        """Nothing beyond `capabilities`."""
        return None

    def start(self, config: ExperimentConfig, seed: int) -> ClassificationSession:
        """Build the data sets, base and adapted model, optimiser and channel pruner."""
        train_set, eval_set = build.build_datasets(config.data)
        example = train_set[0][0].unsqueeze(0).to(config.train.device)
        base, model = build.build_models(config.model, train_set.num_classes, example.shape[1])
        build.adapt_model(model, config)
        model.to(config.train.device)
        train = config.train
        optimizer = make_optimizer(
            model, train.optimizer, train.lr, train.momentum, train.weight_decay
        )
        prunes = bool(config.pruning.density_steps())
        return ClassificationSession(
            config=config,
            seed=seed,
            train_set=train_set,
            eval_set=eval_set,
            example=example,
            base=measure.freeze(base),
            model=model,
            optimizer=optimizer,
            pruner=ChannelPruner(model, example, config.pruning) if prunes else None,
            model_name=config.model.name,
            model_options=build.base_options(config.model, train_set.num_classes, example.shape[1]),
        )


TASK_TYPES.register("classification")(ClassificationTask())
