"""Data-parallel training pieces: DDP wrapping (and re-wrapping after compaction), sharded
loaders with a fixed global batch, and the linear learning-rate scaling rule.

Equivalence with one process: DDP averages gradients over the ranks, and each rank's loss is a
mean over its `global / world_size` examples, so one DDP step with global batch B equals one
single-process step with batch B (up to float summation order) - provided the model has no
layer whose training forward mixes examples of a batch. BatchNorm does: with DDP each rank
normalises with its own sub-batch statistics (and DDP broadcasts rank 0's running statistics),
so BN models train equivalently but not bit-for-bit identically to a single process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from spa._batch import call_model
from spa.distributed.process_group import (
    collective_errors,
    current_rank,
    current_world_size,
    is_distributed,
)
from spa.errors import ConfigError

logger = logging.getLogger(__name__)

# The paper's ResNet recipe (Hedegaard et al., Sec. 4): SGD, momentum 0.9, lr 0.01, batch 64.
PAPER_REFERENCE_BATCH_SIZE = 64
PAPER_LEARNING_RATE = 0.01

OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside a `DistributedDataParallel` wrapper (or `model` itself).

    Args:
        model: a wrapped or plain model.

    Returns:
        The plain model.
    """
    return model.module if isinstance(model, DistributedDataParallel) else model


def _scalar(output) -> torch.Tensor:
    """Sum of every floating tensor in a model output (tensor, tuple, dict, ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return output.float().sum()
    values = output.values() if isinstance(output, dict) else output
    parts = [_scalar(v) for v in values if isinstance(v, torch.Tensor | dict | tuple | list)]
    if not parts:
        raise ConfigError(
            f"unused_parameters: the model output ({type(output).__name__}) holds no tensor"
        )
    return torch.stack(parts).sum()


def unused_parameters(model: nn.Module, example_inputs) -> list[str]:
    """Names of trainable parameters that get no gradient from a forward on `example_inputs`.

    Runs one eval-mode forward and `torch.autograd.grad` (no `.grad` is written, no BatchNorm
    statistic changes). DDP needs `find_unused_parameters=True` exactly when this is non-empty.

    Args:
        model: a plain model.
        example_inputs: a batch (tensor, tuple of positional inputs or dict of keyword inputs).

    Returns:
        The parameter names, in `named_parameters` order.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        return []
    training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            output = call_model(model, example_inputs)
            grads = torch.autograd.grad(_scalar(output), [p for _, p in named], allow_unused=True)
    finally:
        model.train(training)
    return [name for (name, _), grad in zip(named, grads) if grad is None]


def wrap_model(
    model: nn.Module,
    device: str | torch.device | None = None,
    *,
    find_unused_parameters: bool | None = None,
    example_inputs=None,
) -> nn.Module:
    """Move `model` to `device` and wrap it in DDP when running distributed with trainables.

    In a single process, or when no parameter requires a gradient (DDP refuses such models and
    there is nothing to synchronise), the plain model is returned.

    Args:
        model: a plain (or already wrapped, which is unwrapped first) model.
        device: this rank's device; its current device if omitted.
        find_unused_parameters: passed to DDP; None decides with `unused_parameters` on
            `example_inputs` (False without them).
        example_inputs: a batch for that check.

    Returns:
        The module to train: a `DistributedDataParallel` or `model`.

    Raises:
        SpaError: if the ranks' models differ in shape or a rank fails while wrapping.
    """
    model = unwrap_model(model)
    if device is not None:
        model.to(device)
    if not is_distributed():
        return model
    if not any(p.requires_grad for p in model.parameters()):
        logger.info("no trainable parameter: the model is not wrapped in DDP")
        return model
    if find_unused_parameters is None:
        unused = [] if example_inputs is None else unused_parameters(model, example_inputs)
        if unused:
            logger.info("DDP with find_unused_parameters: no gradient reaches %s", unused)
        find_unused_parameters = bool(unused)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    device_ids = [device.index] if device.type == "cuda" and device.index is not None else None
    with collective_errors("wrapping the model in DistributedDataParallel (are shapes equal?)"):
        return DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
        )


def _rebuilt_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    if len(optimizer.param_groups) != 1:
        raise ConfigError(
            f"rewrap_after_compaction: the optimizer has {len(optimizer.param_groups)} parameter "
            "groups; pass make_optimizer=... to rebuild it after compaction"
        )
    options = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    parameters = [p for p in model.parameters() if p.requires_grad]
    return type(optimizer)(parameters, **options)


def rewrap_after_compaction(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: str | torch.device | None = None,
    *,
    make_optimizer: OptimizerFactory | None = None,
    find_unused_parameters: bool | None = None,
    example_inputs=None,
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Rebuild the DDP wrapper and the optimiser after tensor shapes changed.

    `spa.compact` and `SPLoRALayer.select_channels` replace parameters by smaller ones, which the
    old DDP reducer and optimiser still reference. Call this on every rank right after the
    compaction, and use only the returned objects from then on (drop the old ones so the old
    reducer's hooks go away). Optimiser state (e.g. SGD momentum) is kept for parameters that
    are still the same tensor with the same shape; replaced parameters start with fresh state.
    A learning-rate scheduler bound to the old optimiser must be rebuilt too.

    Args:
        model: the wrapped (or plain) model, already compacted.
        optimizer: the optimiser used so far.
        device: this rank's device (see `wrap_model`).
        make_optimizer: builds the new optimiser from the plain model; default: the same class
            and hyper-parameters (current learning rate included) over the trainable parameters,
            which needs a single parameter group.
        find_unused_parameters: see `wrap_model`.
        example_inputs: see `wrap_model`.

    Returns:
        `(wrapped model, optimizer)` to train with from now on.

    Raises:
        ConfigError: if the optimiser has several parameter groups and no `make_optimizer`.
        SpaError: if ranks compacted to different shapes or a rank fails.
    """
    plain = unwrap_model(model)
    if make_optimizer is not None:
        new_optimizer = make_optimizer(plain)
    else:
        new_optimizer = _rebuilt_optimizer(plain, optimizer)
    for group in new_optimizer.param_groups:
        for parameter in group["params"]:
            state = optimizer.state.get(parameter)
            if state and all(
                not isinstance(v, torch.Tensor) or v.dim() == 0 or v.shape == parameter.shape
                for v in state.values()
            ):
                new_optimizer.state[parameter] = state
    wrapped = wrap_model(
        plain, device, find_unused_parameters=find_unused_parameters, example_inputs=example_inputs
    )
    return wrapped, new_optimizer


def per_device_batch_size(global_batch_size: int, world_size: int | None = None) -> int:
    """`global_batch_size / world_size`, which must divide exactly.

    Args:
        global_batch_size: examples per optimiser step over all ranks (the config's batch size).
        world_size: number of ranks; the current world size if omitted.

    Returns:
        Examples per rank and step.

    Raises:
        ConfigError: if it does not divide.
    """
    world_size = current_world_size() if world_size is None else world_size
    if global_batch_size < 1 or global_batch_size % world_size:
        raise ConfigError(
            f"data.batch_size: the global batch size {global_batch_size} must be a positive "
            f"multiple of the number of processes ({world_size}); choose e.g. "
            f"{max(1, round(global_batch_size / world_size)) * world_size}"
        )
    return global_batch_size // world_size


def distributed_loader(
    dataset: Dataset,
    batch_size_global: int,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    drop_last: bool = False,
    num_workers: int = 0,
) -> DataLoader:
    """A loader over this rank's shard, with `batch_size_global / world_size` per batch.

    Uses `DistributedSampler` in every mode (one process = one shard of everything), so the
    examples of global batch k are the same for any world size: with a shuffled order `perm`
    (from `seed + epoch`), rank r takes `perm[r::world_size]`, and the union of the ranks'
    k-th batches is `perm[k*B:(k+1)*B]`, exactly the single-process batch. Unless `drop_last`,
    the sampler pads the shard with repeated examples when `len(dataset)` is not a multiple of
    the world size.

    Args:
        dataset: the full data set (identical on every rank).
        batch_size_global: examples per step over all ranks.
        shuffle: shuffle (training) or keep the order (evaluation, scoring).
        seed: shuffling seed, equal on all ranks.
        epoch: epoch index; the order depends only on `(seed, epoch)`, so resuming reproduces it.
        drop_last: drop the tail that does not fill the ranks evenly.
        num_workers: data-loading worker processes per rank.

    Returns:
        The loader.

    Raises:
        ConfigError: if the global batch is not divisible by the world size.
    """
    world_size = current_world_size()
    sampler = DistributedSampler(
        dataset,
        num_replicas=world_size,
        rank=current_rank(),
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
    )
    sampler.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_size=per_device_batch_size(batch_size_global, world_size),
        sampler=sampler,
        num_workers=num_workers,
    )


def scale_learning_rate(
    base_lr: float,
    global_batch_size: int,
    reference_batch_size: int = PAPER_REFERENCE_BATCH_SIZE,
) -> float:
    """The linear scaling rule (Goyal et al., 2017): `base_lr * global_batch / reference_batch`.

    The paper trains ResNets with batch 64 and lr 0.01 (SGD, momentum 0.9). spa keeps the
    config's *global* batch fixed and splits it over the ranks, so the learning rate stays the
    config's. Only when you grow the global batch (e.g. keep 64 per GPU on 8 GPUs = 512) scale
    the learning rate with this rule (0.01 * 512 / 64 = 0.08), best with a few warm-up epochs.

    Args:
        base_lr: learning rate tuned for `reference_batch_size`.
        global_batch_size: the batch size over all ranks you will train with.
        reference_batch_size: the batch size `base_lr` was tuned for (64 in the paper).

    Returns:
        The scaled learning rate.

    Raises:
        ConfigError: for non-positive values.
    """
    if not base_lr > 0 or global_batch_size < 1 or reference_batch_size < 1:
        raise ConfigError(
            f"scale_learning_rate: need base_lr > 0 and batch sizes >= 1, got base_lr={base_lr}, "
            f"global_batch_size={global_batch_size}, reference_batch_size={reference_batch_size}"
        )
    return base_lr * global_batch_size / reference_batch_size
