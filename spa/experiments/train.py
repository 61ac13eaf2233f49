"""The explicit training and evaluation loop (no framework), with tqdm progress.

Data loading (`make_loader`), model wrapping (`wrap_model`) and the "only the main process writes
files" rule (`is_main_process`) are small separate functions backed by `spa.distributed`: under
`torchrun` they shard the data, wrap the model in DDP and keep file writes on rank 0; in a single
process they are the plain single-process versions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler

from spa import distributed
from spa.errors import ConfigError, TrainingError
from spa.progress import progress as show_progress
from spa.pruning.schedules import paper_lr_factor
from spa.recovery import Distiller

logger = logging.getLogger(__name__)

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EpochStats:
    """Mean loss and accuracy over the examples seen.

    Args:
        loss: mean loss per example.
        accuracy: fraction of correctly classified examples.
        examples: number of examples.
    """

    loss: float
    accuracy: float
    examples: int


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    shard: bool = False,
) -> DataLoader:
    """A data loader whose shuffling depends only on `(seed, epoch)`.

    Seeding the order per epoch (instead of drawing from a running generator) makes a resumed run
    see exactly the batches an uninterrupted run would. With `shard` in a distributed run, each
    rank loads `batch_size / world_size` examples of every global batch; the global batches are
    the single-process ones (`torch.randperm` with the same generator seed).

    Args:
        dataset: the data set.
        batch_size: examples per batch (the global batch when sharded).
        shuffle: shuffle (training) or keep the order (evaluation, scoring).
        seed: run seed.
        epoch: global epoch index.
        shard: split each batch over the ranks of a distributed run (training, scoring).

    Returns:
        The loader.

    Raises:
        ConfigError: if a sharded `batch_size` is not divisible by the world size.
    """
    if shard and distributed.is_distributed():
        return distributed.distributed_loader(
            dataset, batch_size, shuffle=shuffle, seed=seed * 1_000_003, epoch=epoch
        )
    if shuffle:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=0)


def wrap_model(model: nn.Module, example_inputs: torch.Tensor | None = None) -> nn.Module:
    """The module the loop trains: DDP in a distributed run with trainables, else `model`.

    Args:
        model: the model, already on its device.
        example_inputs: a batch to detect parameters without gradients (DDP option).

    Returns:
        The module to train.
    """
    return distributed.wrap_model(model, example_inputs=example_inputs)


def is_main_process() -> bool:
    """True in the process that writes files (rank 0; always without distributed training)."""
    return distributed.is_main_process()


def make_optimizer(
    model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """An optimiser over the model's trainable parameters.

    Args:
        model: the model.
        name: "sgd" (with momentum) or "adamw".
        lr: learning rate.
        momentum: SGD momentum.
        weight_decay: weight decay.

    Returns:
        The optimiser.

    Raises:
        ConfigError: if no parameter is trainable or `name` is unknown.
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ConfigError(
            "the model has no trainable parameters; check adapter.kind and adapter.trainable"
        )
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"train.optimizer: unknown {name!r}; allowed: 'sgd', 'adamw'")


def block_learning_rate(base_lr: float, epoch: int, epochs: int, schedule: str) -> float:
    """Learning rate for `epoch` (0-based) of a training block of `epochs` epochs.

    "paper": divided by 5 at each quarter of the block (epochs `[0, E/4)` use `base_lr`,
    `[E/4, E/2)` use `base_lr / 5`, ...; `spa.pruning.paper_lr_factor`); "constant": always
    `base_lr`.

    Args:
        base_lr: learning rate at the start of the block.
        epoch: epoch index within the block.
        epochs: epochs in the block.
        schedule: "paper" or "constant".

    Returns:
        The learning rate.
    """
    if schedule == "constant":
        return base_lr
    return base_lr * paper_lr_factor(epoch, epochs)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    *,
    loss_fn: LossFunction | None = None,
    device: str | torch.device = "cpu",
    max_batches: int | None = None,
    description: str = "train",
    distiller: Distiller | None = None,
) -> EpochStats:
    """Train one epoch and return the running loss and accuracy (over all ranks).

    Args:
        model: the (wrapped) model; put in training mode here.
        loader: batches of `(inputs, labels)`.
        optimizer: the optimiser.
        loss_fn: defaults to cross-entropy.
        device: where batches are moved.
        max_batches: stop after this many batches.
        description: progress-bar label.
        distiller: adds distillation from the unpruned model to the loss (`spa.recovery`).

    Returns:
        Mean loss and accuracy over the examples trained on (the task loss).

    Raises:
        TrainingError: if the loss of a batch is NaN or infinite (naming `description` and the
            batch), before that batch updates the weights.
    """
    loss_fn = loss_fn or nn.functional.cross_entropy
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    total = len(loader) if max_batches is None else min(max_batches, len(loader))
    progress = show_progress(loader, total=total, desc=description, leave=False)
    for index, (inputs, labels) in enumerate(progress):
        if max_batches is not None and index >= max_batches:
            break
        inputs, labels = inputs.to(device), labels.to(device)
        optimizer.zero_grad(set_to_none=True)
        logits = model(inputs)
        loss = loss_fn(logits, labels)
        value = float(loss.detach())
        if distiller is not None:
            loss = distiller.loss(model, inputs, logits, loss)
        # Stop before the update spreads a NaN/inf into the weights.
        if not math.isfinite(float(loss.detach())):
            raise TrainingError(
                f"{description}: the loss became {float(loss.detach())} at batch {index + 1}; "
                "training stopped (lower train.lr, or check the data for NaN/inf values)"
            )
        loss.backward()
        optimizer.step()
        total_loss += value * len(labels)
        correct += int((logits.detach().argmax(dim=1) == labels).sum())
        seen += len(labels)
    progress.close()
    if distributed.is_distributed():  # every rank trained on its shard: report the global means
        sums = torch.tensor([total_loss, correct, seen], dtype=torch.float64)
        sums = distributed.all_reduce_statistics({"epoch": sums}, reduction="sum")["epoch"]
        total_loss, correct, seen = float(sums[0]), int(sums[1]), int(sums[2])
    if seen == 0:
        return EpochStats(loss=float("nan"), accuracy=float("nan"), examples=0)
    return EpochStats(loss=total_loss / seen, accuracy=correct / seen, examples=seen)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    loss_fn: LossFunction | None = None,
    device: str | torch.device = "cpu",
) -> EpochStats:
    """Evaluate in eval mode (restoring the previous mode afterwards).

    Args:
        model: the model.
        loader: batches of `(inputs, labels)`.
        loss_fn: defaults to cross-entropy.
        device: where batches are moved.

    Returns:
        Mean loss and accuracy over the whole loader.
    """
    loss_fn = loss_fn or nn.functional.cross_entropy
    was_training = model.training
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        logits = model(inputs)
        total_loss += float(loss_fn(logits, labels)) * len(labels)
        correct += int((logits.argmax(dim=1) == labels).sum())
        seen += len(labels)
    model.train(was_training)
    if seen == 0:
        return EpochStats(loss=float("nan"), accuracy=float("nan"), examples=0)
    return EpochStats(loss=total_loss / seen, accuracy=correct / seen, examples=seen)
