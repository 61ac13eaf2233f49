"""The extractive question-answering task type: BERT-style models on SQuAD v1.1, block pruning.

Data: SQuAD v1.1 JSON files under `data.root` and the tokenizer of the local `transformers`
model directory `model.path`; loss: the model's span cross-entropy (plus the block pruner's
penalty); metric: the official F1 (recorded as a fraction, with exact match and F1 in percent);
deployable model: `spa.compact_blocks` of the block-pruned model for measurements, and a bundle
of the adapted model. Every adapter kind that prunes blocks (`AdapterKind.pruning = "block"`)
runs, with the automated gradual (cubic) schedule from density 1 to `pruning.target_density`
over one step of `train.initial_epochs` warm-up plus `train.epochs_per_step` pruning epochs.
"""

from __future__ import annotations

import copy
import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spa.accounting import count_learned_parameters
from spa.errors import ConfigError
from spa.experiments.build import adapt_model
from spa.experiments.config import ExperimentConfig
from spa.experiments.measure import measure_latency
from spa.experiments.task_types.base import TASK_TYPES, Capabilities, Evaluation, Step

logger = logging.getLogger(__name__)

# SQuAD v1.1 file names per split; `data.options.train_file` / `eval_file` override them.
SPLIT_FILES = {"train": "train-v1.1.json", "val": "dev-v1.1.json", "test": "dev-v1.1.json"}
QA_OPTIONS = ("max_length", "doc_stride", "train_file", "eval_file")
AUTO_CLASS = "AutoModelForQuestionAnswering"


def _options(config: ExperimentConfig) -> dict[str, Any]:
    return {"max_length": 384, "doc_stride": 128, **config.data.options}


@dataclass
class QASession:
    """One seed of a question-answering run (see `SeedSession`)."""

    config: ExperimentConfig
    tokenizer: Any
    eval_examples: list
    base: nn.Module
    model: nn.Module
    trainer: Any  # spa.qa.QATrainer
    pruner: Any  # spa.pruning.gradual.GradualBlockPruner
    options: dict[str, Any] = field(default_factory=dict)
    last_loss: float | None = None

    def prune(self, step: Step) -> None:
        """Nothing before training: the gradual pruner masks after every optimizer step."""

    def train_epoch(self, step: Step, epoch: int) -> dict[str, Any]:
        """One pass over the training features; returns lr (at its start) and the mean loss."""
        lr = self.trainer.learning_rate()
        losses = self.trainer.train_epoch()
        self.last_loss = losses[-1]
        return {"lr": lr, "loss": statistics.fmean(losses)}

    def finish_training(self, step: Step) -> None:
        """Fix the final block masks (the cubic schedule reaches its target)."""
        self.pruner.finish()

    def evaluate(self) -> Evaluation:
        """Official SQuAD exact match and F1 (percent); the metric is F1 / 100."""
        from spa.qa import evaluate_qa

        result = evaluate_qa(
            self.model,
            self.tokenizer,
            self.eval_examples,
            max_length=self.options["max_length"],
            doc_stride=self.options["doc_stride"],
            batch_size=self.config.data.eval_batch_size,
        )
        extras = {"exact_match": result.exact_match, "f1": result.f1}
        return Evaluation(metric=result.f1 / 100, extras={**extras, "train_loss": self.last_loss})

    def deploy(self, bundle_path: Path) -> dict[str, Any]:
        """Compact a copy (`spa.compact_blocks`), time it and save the bundle."""
        from spa.adapters.protocols import adapter_layers
        from spa.deploy import compact_blocks
        from spa.experiments.structure import layer_structure
        from spa.tasks import save_task

        sequence = torch.ones(1, self.options["max_length"], dtype=torch.long)
        compacted, report = compact_blocks(self.model, {"input_ids": sequence})
        bundle = save_task(self.model, bundle_path, base_model=self.base)
        shape = (self.config.train.latency_batch_size, self.options["max_length"])
        latency = measure_latency(compacted, {"input_ids": torch.ones(shape, dtype=torch.long)})
        return {
            "density": self.pruner.density(),
            "dparams": count_learned_parameters(self.model),
            "params": report.parameters_after,
            "flops": report.flops_after,
            "macs": report.flops_after // 2,
            **latency.record(),
            "bundle_bytes": bundle.size_bytes,
            "structure": layer_structure(
                compacted, self.base, [name for name, _ in adapter_layers(self.model)]
            ),
        }

    def checkpoint_state(self) -> None:
        """No checkpoint: the single gradual step is rerun as a whole after an interruption."""
        return None

    def restore(self, state: dict[str, Any]) -> None:
        """Never called (no checkpoint is written)."""


class ExtractiveQATask:
    """SQuAD v1.1 extractive QA with block pruning (see `TaskType`)."""

    name = "extractive-qa"
    metric_name = "f1"
    supports_distributed = False
    capabilities = Capabilities(
        models="question answering", pruning=("block",), schedules=("gradual",)
    )

    def data_names(self) -> tuple[str, ...]:
        """SQuAD v1.1 files (`data.name = "squad"`)."""
        return ("squad",)

    def config_problem(self, config: ExperimentConfig) -> str | None:
        """Known `data.options`, a `transformers` model and a data folder."""
        if config.distill.is_active:
            return "config key 'distill': the squad task type has no distillation yet"
        unknown = sorted(set(config.data.options) - set(QA_OPTIONS))
        if unknown:
            return (
                f"config key 'data.options.{unknown[0]}': unknown for data.name = 'squad'; "
                f"allowed: {', '.join(QA_OPTIONS)}"
            )
        if config.model.name != "transformers":
            return (
                "config key 'model.name': data.name = 'squad' needs model.name = 'transformers' "
                f"and model.path, got {config.model.name!r}"
            )
        if config.data.root is None:
            return "config key 'data.root': the folder holding the SQuAD JSON files"
        return None

    def start(self, config: ExperimentConfig, seed: int) -> QASession:
        """Load the model, tokenizer and SQuAD files; adapt; set up the trainer and pruner."""
        from spa.data.squad import read_squad
        from spa.models.loading import load_tokenizer, load_transformers
        from spa.pruning.block_criteria import create_block_criterion
        from spa.pruning.gradual import GradualBlockPruner, GradualPruningConfig
        from spa.qa import QATrainer, QATrainingConfig, prepare_train_features
        from spa.qa.train import steps_per_epoch

        if not Path(config.model.path).is_dir():
            raise ConfigError(
                f"config key 'model.path': {config.model.path} is not a local model directory"
            )
        options = _options(config)
        root = Path(config.data.root)
        train_file = root / options.get("train_file", SPLIT_FILES[config.data.train_split])
        eval_file = root / options.get("eval_file", SPLIT_FILES[config.data.eval_split])
        model = load_transformers(config.model.path, AUTO_CLASS)
        tokenizer = load_tokenizer(config.model.path)
        train_examples, eval_examples = read_squad(train_file), read_squad(eval_file)
        base = copy.deepcopy(model).eval()
        model = adapt_model(model, config)
        train = config.train
        training = QATrainingConfig(
            epochs=train.initial_epochs + train.epochs_per_step,
            batch_size=config.data.batch_size,
            learning_rate=train.lr,
            weight_decay=train.weight_decay,
            max_length=options["max_length"],
            doc_stride=options["doc_stride"],
            seed=seed,
        )
        features = prepare_train_features(
            train_examples, tokenizer, options["max_length"], options["doc_stride"]
        )
        per_epoch = steps_per_epoch(len(features), config.data.batch_size)
        schedule = GradualPruningConfig(
            final_density=config.pruning.target_density,
            warmup_steps=train.initial_epochs * per_epoch,
            pruning_steps=max(1, train.epochs_per_step * per_epoch),
            scope=config.pruning.ranking,
        )
        # The pruner first: scores or gates it adds to the model must reach the optimiser.
        pruner = GradualBlockPruner(
            model, create_block_criterion(config.pruning.criterion), schedule
        )
        trainer = QATrainer(model, tokenizer, train_examples, training, pruner, features)
        return QASession(
            config=config,
            tokenizer=tokenizer,
            eval_examples=eval_examples,
            base=base,
            model=model,
            trainer=trainer,
            pruner=pruner,
            options=options,
        )


TASK_TYPES.register("extractive-qa")(ExtractiveQATask())
