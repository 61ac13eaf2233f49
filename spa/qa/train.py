"""Training and evaluation of extractive question answering (`BertForQuestionAnswering`).

An explicit loop, no framework: AdamW over the trainable parameters with linear warm-up and
decay, an optional block pruner (`spa.pruning.gradual.GradualBlockPruner`) whose penalty is added
to the loss and which is stepped after every optimizer step. Evaluation encodes with the same
document stride, post-processes start/end logits into answer text and scores them with the
official SQuAD v1.1 exact match and F1 (`spa.data.squad.squad_evaluate`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from spa.data.squad import SquadExample, squad_evaluate
from spa.errors import ConfigError
from spa.qa.features import QAFeatures, prepare_eval_features, prepare_train_features
from spa.qa.postprocess import postprocess_predictions

logger = logging.getLogger(__name__)


class Pruner(Protocol):
    """What the training loop needs from a pruner."""

    def penalty(self) -> torch.Tensor: ...

    def step(self) -> None: ...


@dataclass(frozen=True, kw_only=True)
class QATrainingConfig:
    """Question-answering training settings (defaults follow BERT on SQuAD v1.1).

    Args:
        epochs: passes over the training features; > 0.
        batch_size: features per optimizer step; > 0.
        learning_rate: AdamW peak learning rate; > 0.
        weight_decay: AdamW weight decay; >= 0.
        warmup_fraction: fraction of steps with linear warm-up; in [0, 1).
        max_length: tokens per feature.
        doc_stride: overlap between windows of a long context.
        seed: seed of the shuffling generator (global seeds are not touched).
        show_progress: show a tqdm progress bar.
    """

    epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 3e-5
    weight_decay: float = 0.0
    warmup_fraction: float = 0.1
    max_length: int = 384
    doc_stride: int = 128
    seed: int = 0
    show_progress: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "max_length", "doc_stride"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be an integer > 0, got {value!r}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")


@dataclass
class QAEvaluation:
    """Evaluation result: official metrics (percentages) and the predicted answers.

    Attributes:
        exact_match: SQuAD exact match in percent.
        f1: SQuAD token F1 in percent.
        predictions: answer text per question id.
    """

    exact_match: float
    f1: float
    predictions: dict[str, str] = field(default_factory=dict)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def steps_per_epoch(num_features: int, batch_size: int) -> int:
    """Optimizer steps in one epoch over `num_features` (the last batch may be smaller)."""
    return -(-num_features // batch_size)


class QATrainer:
    """Trains extractive QA epoch by epoch, in place (AdamW, linear warm-up and decay).

    The optimiser, learning-rate schedule and shuffling generator live across epochs, so
    `config.epochs` calls of `train_epoch` equal one `train_qa` call.

    Args:
        model: a `BertForQuestionAnswering` (adapted, block-wrapped or plain); only parameters
            with `requires_grad` are optimised.
        tokenizer: a fast tokenizer matching the model's vocabulary.
        examples: training examples (the first answer of each is the target).
        config: the training settings (`epochs` sets the length of the schedule).
        pruner: optional pruner; its `penalty()` joins the loss and `step()` follows every
            optimizer step. Create it before the trainer: parameters it adds to the model
            (learned scores, gates) are optimised only if they exist here.
        features: the encoded training features, if already prepared from `examples` with the
            config's `max_length` and `doc_stride`.

    Raises:
        ConfigError: if nothing in the model is trainable or there are no examples.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        examples: Sequence[SquadExample],
        config: QATrainingConfig,
        pruner: Pruner | None = None,
        features: QAFeatures | None = None,
    ) -> None:
        parameters = [p for p in model.parameters() if p.requires_grad]
        if not parameters:
            raise ConfigError("train_qa: the model has no trainable parameter")
        if not examples:
            raise ConfigError("train_qa: no training examples")
        self.model, self.config, self.pruner = model, config, pruner
        if features is None:
            features = prepare_train_features(
                examples, tokenizer, config.max_length, config.doc_stride
            )
        device = _device(model)
        self.inputs = {name: tensor.to(device) for name, tensor in features.inputs.items()}
        self.num_features = len(features)
        self.steps_per_epoch = steps_per_epoch(len(features), config.batch_size)
        total = self.steps_per_epoch * config.epochs
        warmup = int(config.warmup_fraction * total)
        self.optimizer = torch.optim.AdamW(
            parameters, lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: (
                (step + 1) / max(warmup, 1)
                if step < warmup
                else max(0.0, (total - step) / max(total - warmup, 1))
            ),
        )
        self.generator = torch.Generator().manual_seed(config.seed)

    def learning_rate(self) -> float:
        """The learning rate of the next optimizer step."""
        return float(self.optimizer.param_groups[0]["lr"])

    def train_epoch(self) -> list[float]:
        """One pass over the training features; returns the loss of every step (with penalty)."""
        model, pruner, device = self.model, self.pruner, _device(self.model)
        model.train()
        losses: list[float] = []
        order = torch.randperm(self.num_features, generator=self.generator).to(device)
        progress = tqdm(
            total=self.steps_per_epoch, desc="train QA", disable=not self.config.show_progress
        )
        for batch in order.split(self.config.batch_size):
            loss = model(**{name: tensor[batch] for name, tensor in self.inputs.items()}).loss
            if pruner is not None:
                loss = loss + pruner.penalty().to(loss.device)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if pruner is not None:
                pruner.step()
            losses.append(float(loss.detach()))
            progress.update(1)
            progress.set_postfix(loss=f"{losses[-1]:.4f}")
        progress.close()
        return losses


def train_qa(
    model: nn.Module,
    tokenizer,
    examples: Sequence[SquadExample],
    config: QATrainingConfig,
    pruner: Pruner | None = None,
) -> list[float]:
    """Train `model` for extractive QA on `examples`, in place.

    Args:
        model: a `BertForQuestionAnswering` (adapted, block-wrapped or plain); only parameters
            with `requires_grad` are optimised.
        tokenizer: a fast tokenizer matching the model's vocabulary.
        examples: training examples (the first answer of each is the target).
        config: the training settings.
        pruner: optional pruner; its `penalty()` joins the loss and `step()` follows every
            optimizer step.

    Returns:
        The loss of every step (task loss plus penalty).

    Raises:
        ConfigError: if nothing in the model is trainable or there are no examples.
    """
    trainer = QATrainer(model, tokenizer, examples, config, pruner)
    losses: list[float] = []
    for _ in range(config.epochs):
        losses += trainer.train_epoch()
    logger.info("train_qa: %d steps, final loss %.4f", len(losses), losses[-1])
    return losses


def predict_logits(
    model: nn.Module, inputs: dict[str, torch.Tensor], batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Start and end logits of every feature, in eval mode without gradients.

    Args:
        model: a question-answering model returning `start_logits` and `end_logits`.
        inputs: encoded features (`QAFeatures.inputs` without answer positions).
        batch_size: features per forward pass.

    Returns:
        `(start_logits, end_logits)`, each `(features, tokens)`, on the CPU.
    """
    device = _device(model)
    was_training = model.training
    model.eval()
    starts, ends = [], []
    count = next(iter(inputs.values())).shape[0]
    with torch.no_grad():
        for begin in range(0, count, batch_size):
            batch = {k: v[begin : begin + batch_size].to(device) for k, v in inputs.items()}
            output = model(**batch)
            starts.append(output.start_logits.float().cpu())
            ends.append(output.end_logits.float().cpu())
    model.train(was_training)
    return torch.cat(starts), torch.cat(ends)


def evaluate_qa(
    model: nn.Module,
    tokenizer,
    examples: Sequence[SquadExample],
    max_length: int = 384,
    doc_stride: int = 128,
    batch_size: int = 64,
    n_best: int = 20,
    max_answer_length: int = 30,
) -> QAEvaluation:
    """Predict answers for `examples` and score them with the official SQuAD v1.1 metrics.

    Args:
        model: a question-answering model.
        tokenizer: a fast tokenizer matching the model's vocabulary.
        examples: evaluation examples with their ground-truth answers.
        max_length: tokens per feature.
        doc_stride: overlap between windows of a long context.
        batch_size: features per forward pass.
        n_best: top start/end candidates paired per feature.
        max_answer_length: longest answer in tokens.

    Returns:
        Exact match and F1 (percent) and the predictions.

    Raises:
        ConfigError: if there are no examples.
    """
    if not examples:
        raise ConfigError("evaluate_qa: no evaluation examples")
    features = prepare_eval_features(examples, tokenizer, max_length, doc_stride)
    start_logits, end_logits = predict_logits(model, features.inputs, batch_size)
    predictions = postprocess_predictions(
        examples, features, start_logits, end_logits, n_best, max_answer_length
    )
    metrics = squad_evaluate(examples, predictions)
    return QAEvaluation(
        exact_match=metrics["exact_match"], f1=metrics["f1"], predictions=predictions
    )
