"""Scenarios that run identically in one process and on every rank of a 2-process group.

Each scenario returns a dict of plain values / tensors. The multi-process tests run them through
`tests.distributed._worker` (one process per rank); the single-process reference runs the same
function in the pytest process, where no process group exists and every helper of
`spa.distributed` degrades to its single-process behaviour.
"""

from __future__ import annotations

import copy
import os
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import spa
from spa.adapters.block_fine_pruning import block_prunable_layers
from spa.distributed import (
    all_reduce_gradients,
    all_reduce_statistics,
    assert_same_across_ranks,
    broadcast_from_main,
    current_rank,
    distributed_loader,
    mask_fingerprint,
    rewrap_after_compaction,
    synchronise_buffers,
    unwrap_model,
    wrap_model,
)
from spa.errors import SpaError
from spa.pruning import (
    ChannelPruningConfig,
    apply_masks,
    channel_groups,
    compact,
    compute_masks,
    prune_step,
    score,
)
from spa.pruning.block_criteria import MovementCriterion
from spa.pruning.block_masking import apply_block_masks

GLOBAL_BATCH = 8
LEARNING_RATE = 0.1


class TinyCNN(nn.Module):
    """conv-BN-ReLU twice, global pool, head `fc`."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def mlp() -> nn.Module:
    """Two hidden Linear layers (no BatchNorm, so DDP equals one process exactly) and a head."""
    return nn.Sequential(
        nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    )


def adapted_mlp() -> nn.Module:
    """SPLoRA (rank 2) on the hidden layers with non-trivial adapters, seeded identically."""
    torch.manual_seed(0)
    model = spa.adapt(mlp(), spa.SPLoRAConfig(rank=2))
    with torch.no_grad():
        for _, layer in spa.adapter_layers(model):
            layer.up.uniform_(-0.3, 0.3)
    return model


def vector_data(count: int = 32) -> TensorDataset:
    """Features and labels of a random linear teacher (learnable, fixed by its own seed)."""
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(count, 12, generator=generator)
    teacher = torch.randn(12, 3, generator=generator)
    return TensorDataset(inputs, (inputs @ teacher).argmax(dim=1))


def image_data(count: int = 32) -> TensorDataset:
    """Random 3x8x8 images with random labels (shards differ a lot)."""
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(count, 3, 8, 8, generator=generator)
    return TensorDataset(images, torch.randint(0, 4, (count,), generator=generator))


def _masks_fingerprint(model, groups, scores) -> str:
    masked = copy.deepcopy(model)
    apply_masks(masked, compute_masks(groups, scores, 0.5))
    return mask_fingerprint(masked)


def taylor_masks() -> dict:
    """Taylor scores on this rank's shard: with and without the all-reduce, and on all data."""
    torch.manual_seed(0)
    model = spa.adapt(TinyCNN(), spa.SPLoRAConfig(rank=2))
    dataset = image_data()
    groups = channel_groups(model, dataset.tensors[0][:2])
    shard = list(distributed_loader(dataset, 16, shuffle=False))
    reduced = score(
        model, "taylor", groups, shard, num_batches=None, reduce_fn=all_reduce_statistics
    )
    local = score(model, "taylor", groups, shard, num_batches=None)
    everything = list(DataLoader(dataset, batch_size=16))
    reference = score(model, "taylor", groups, everything, num_batches=None)
    local_fingerprint = _masks_fingerprint(model, groups, local)
    try:
        assert_same_across_ranks(local_fingerprint)
        mismatch = ""
    except SpaError as error:
        mismatch = str(error)
    reduced_fingerprint = _masks_fingerprint(model, groups, reduced)
    assert_same_across_ranks(reduced_fingerprint)  # raises if the all-reduce did not help
    return {
        "reduced": reduced_fingerprint,
        "local": local_fingerprint,
        "reference": _masks_fingerprint(model, groups, reference),
        "reduced_scores": reduced,
        "reference_scores": reference,
        "mismatch_error": mismatch,
        "shard_size": sum(len(labels) for _, labels in shard),
    }


def _train_epochs(wrapped, optimizer, dataset, epochs: range) -> None:
    for epoch in epochs:
        for inputs, labels in distributed_loader(
            dataset, GLOBAL_BATCH, shuffle=True, seed=3, epoch=epoch
        ):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(wrapped(inputs), labels).backward()
            optimizer.step()


def _metrics(model: nn.Module, dataset: TensorDataset) -> dict:
    inputs, labels = dataset.tensors
    with torch.no_grad():
        logits = unwrap_model(model)(inputs)
    return {
        "loss": float(nn.functional.cross_entropy(logits, labels)),
        "accuracy": float((logits.argmax(dim=1) == labels).float().mean()),
    }


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in unwrap_model(model).state_dict().items()}


class _Holder(nn.Module):
    def __init__(self, buffer: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("value", buffer)


def ddp_training() -> dict:
    """Two epochs (8 steps of global batch 8) of SPLoRA training with SGD + momentum."""
    model = adapted_mlp()
    dataset = vector_data()
    wrapped = wrap_model(model, "cpu", example_inputs=dataset.tensors[0][:2])
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=LEARNING_RATE, momentum=0.9)
    before = _metrics(model, dataset)
    _train_epochs(wrapped, optimizer, dataset, range(2))
    buffer = torch.full((2,), float(current_rank()))
    synchronise_buffers(_Holder(buffer))  # rank 1's buffer becomes rank 0's
    return {
        "broadcast": broadcast_from_main({"rank": current_rank()}),
        "synchronised": buffer,
        "state": _state(wrapped),
        "before": before,
        "after": _metrics(wrapped, dataset),
        "wrapped": type(wrapped).__name__,
    }


def compaction_midway() -> dict:
    """Train, prune to 50% with all-reduced Taylor scores, compact, rewrap, train again."""
    model = adapted_mlp()
    dataset = vector_data()
    example = dataset.tensors[0][:2]
    wrapped = wrap_model(model, "cpu", example_inputs=example)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=LEARNING_RATE, momentum=0.9)
    _train_epochs(wrapped, optimizer, dataset, range(1))
    groups = channel_groups(model, example)
    config = ChannelPruningConfig(criterion="taylor", num_batches=None)
    scoring = list(distributed_loader(dataset, 16, shuffle=False))
    prune_step(model, groups, 0.5, config, scoring, reduce_fn=all_reduce_statistics)
    fingerprint = mask_fingerprint(model)
    assert_same_across_ranks(fingerprint)
    parameters_before = sum(p.numel() for p in model.parameters())
    compact(model, example)
    wrapped, optimizer = rewrap_after_compaction(wrapped, optimizer, "cpu", example_inputs=example)
    _train_epochs(wrapped, optimizer, dataset, range(1, 3))
    kept = {name: layer.out_indices.clone() for name, layer in spa.adapter_layers(model)}
    return {
        "fingerprint": fingerprint,
        "kept": kept,
        "parameters": (parameters_before, sum(p.numel() for p in model.parameters())),
        "state": _state(wrapped),
        "after": _metrics(wrapped, dataset),
        "wrapped": type(wrapped).__name__,
    }


def movement_masks() -> dict:
    """Movement scores learned on this rank's shard, with and without averaging their grads."""
    torch.manual_seed(0)
    config = spa.SPLoPAConfig(block_shape=(4, 4), num_prototypes=2, init_range=0.3)
    model = spa.adapt(mlp(), config)
    dataset = vector_data()
    fingerprints = {}
    for reduced in (False, True):
        criterion = MovementCriterion(score_learning_rate=1.0)
        criterion.attach(dict(block_prunable_layers(model)))
        for inputs, labels in distributed_loader(dataset, GLOBAL_BATCH, shuffle=False):
            nn.functional.cross_entropy(model(inputs), labels).backward()
            if reduced:
                all_reduce_gradients(criterion.state_tensors())
            criterion.update_scores()
            model.zero_grad(set_to_none=True)
        masked = copy.deepcopy(model)
        criterion.detach()
        apply_block_masks(dict(block_prunable_layers(masked)), criterion.masks(0.5))
        fingerprints["reduced" if reduced else "local"] = mask_fingerprint(masked)
    return fingerprints


def rank_exits() -> dict:
    """Rank 1 dies right away; rank 0 then needs it for an all-reduce."""
    if current_rank() == 1:
        os._exit(3)  # a crash: no clean shutdown of the process group
    time.sleep(0.5)
    all_reduce_statistics({"layer": torch.ones(3)})
    return {}


def rank_hangs() -> dict:
    """Rank 1 stops responding; rank 0 wraps the model in DDP (a collective) and must time out."""
    if current_rank() == 1:
        time.sleep(120)
        sys.exit(0)
    wrap_model(adapted_mlp(), "cpu")
    return {}


SCENARIOS = {
    "taylor_masks": taylor_masks,
    "ddp_training": ddp_training,
    "compaction_midway": compaction_midway,
    "movement_masks": movement_masks,
    "rank_exits": rank_exits,
    "rank_hangs": rank_hangs,
}
