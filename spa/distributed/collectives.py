"""Collectives that keep pruning decisions identical on every rank.

Each rank sees a different shard of the data, so criterion statistics (Gradient, Taylor, LRP,
movement scores, L0 gates) differ per rank before they are combined. `all_reduce_statistics`
averages them over the ranks before ranking, so every rank ranks the same numbers and computes
the same masks; `mask_fingerprint` + `assert_same_across_ranks` check that they did.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Literal, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from spa.adapters.protocols import BLOCK_MASK, IN_MASK, OUT_MASK
from spa.distributed.process_group import collective_errors, current_world_size, is_distributed
from spa.distributed.training import unwrap_model
from spa.errors import ConfigError, SpaError
from spa.pruning import module_masks

Key = TypeVar("Key")
Value = TypeVar("Value")
Reduction = Literal["mean", "sum"]
# Boolean mask buffers: SPLoRA rows/columns, SPLoPA / fine-pruning blocks, hook masks on norms,
# the head and excluded layers (spa.pruning.module_masks); masks of bare per-channel parameters
# are named with the prefix `module_masks.PARAMETER_MASK`.
MASK_BUFFER_NAMES: tuple[str, ...] = (
    OUT_MASK,
    IN_MASK,
    BLOCK_MASK,
    module_masks.OUT_MASK,
    module_masks.IN_MASK,
)


def _is_mask_buffer(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return leaf in MASK_BUFFER_NAMES or leaf.startswith(module_masks.PARAMETER_MASK)


def _communication_device() -> torch.device:
    """nccl only moves CUDA tensors; gloo moves CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _layout_fingerprint(statistics: Mapping, keys: list) -> str:
    digest = hashlib.sha256()
    for key in keys:
        value = statistics[key]
        digest.update(f"{key!r}:{tuple(value.shape)}:{value.dtype};".encode())
    return digest.hexdigest()


def all_reduce_statistics(
    statistics: Mapping[Key, torch.Tensor], reduction: Reduction = "mean"
) -> dict[Key, torch.Tensor]:
    """Combine per-rank criterion statistics over all ranks (identity in a single process).

    Usable as `reduce_fn` of `spa.pruning.score`, `prune_step` and `iterative_prune`, and on a
    block criterion's `scores()` before `compute_block_masks`. The default is the *mean* over
    ranks: criteria already average over the samples they saw, so with equally large shards the
    mean equals the single-process statistic over the union of the shards (Taylor, LRP; for
    Gradient it is the mean of per-rank batch gradient magnitudes). Per-layer normalisation
    makes the ranking itself independent of mean vs sum.

    All tensors travel in one float64 all-reduce and come back in their own dtype and device.

    Args:
        statistics: per key (layer path or group index), a tensor; every rank must pass the
            same keys with the same shapes.
        reduction: "mean" (default) or "sum" over ranks.

    Returns:
        A new dict with the reduced tensors, keys in the input's order.

    Raises:
        ConfigError: for an unknown `reduction`.
        SpaError: if ranks pass different keys or shapes, or a rank fails during the reduce.
    """
    if reduction not in ("mean", "sum"):
        raise ConfigError(
            f"all_reduce_statistics: reduction must be 'mean' or 'sum', got {reduction!r}"
        )
    if not is_distributed():
        return dict(statistics)
    keys = sorted(statistics, key=repr)  # insertion order may differ between ranks
    assert_same_across_ranks(
        _layout_fingerprint(statistics, keys), what="criterion statistics (keys and shapes)"
    )
    device = _communication_device()
    if not keys:
        return {}
    flat = torch.cat([statistics[key].detach().double().flatten().to(device) for key in keys])
    with collective_errors("all-reducing pruning statistics"):
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    if reduction == "mean":
        flat /= current_world_size()
    reduced, offset = {}, 0
    for key in keys:
        value = statistics[key]
        chunk = flat[offset : offset + value.numel()]
        offset += value.numel()
        reduced[key] = chunk.reshape(value.shape).to(dtype=value.dtype, device=value.device)
    return {key: reduced[key] for key in statistics}


def all_reduce_gradients(tensors: Iterable[torch.Tensor]) -> None:
    """Average the `.grad` of tensors DDP does not manage (movement scores, L0 log-alphas).

    DDP averages the gradients of the wrapped model's parameters; a block criterion keeps its
    learned state outside the model, so call this after `backward()` and before the criterion's
    `update_scores()`. A missing gradient counts as zeros (and is created), so every rank sends
    the same layout. No-op in a single process.

    Args:
        tensors: e.g. `criterion.state_tensors()`, in the same order on every rank.

    Raises:
        SpaError: if a rank fails during the reduce.
    """
    tensors = list(tensors)
    if not is_distributed() or not tensors:
        return
    for tensor in tensors:
        if tensor.grad is None:
            tensor.grad = torch.zeros_like(tensor)
    device = _communication_device()
    flat = torch.cat([t.grad.detach().double().flatten().to(device) for t in tensors])
    with collective_errors("all-reducing criterion gradients"):
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= current_world_size()
    offset = 0
    for tensor in tensors:
        chunk = flat[offset : offset + tensor.numel()]
        offset += tensor.numel()
        tensor.grad.copy_(chunk.reshape(tensor.shape))


def mask_fingerprint(model: nn.Module) -> str:
    """SHA-256 over every pruning mask buffer of `model`, in module order.

    Covers `out_mask`, `in_mask`, `block_mask`, the hook masks `spa_out_mask` / `spa_in_mask`
    and the masks of bare per-channel parameters, each with its path and shape, so two models
    with the same fingerprint prune exactly the same channels and blocks. A
    `DistributedDataParallel` wrapper is looked through.

    Args:
        model: a (possibly wrapped) model.

    Returns:
        The hex digest.
    """
    model = unwrap_model(model)
    digest = hashlib.sha256()
    for name, buffer in model.named_buffers():
        if not _is_mask_buffer(name):
            continue
        mask = buffer.detach().to("cpu", torch.bool).contiguous()
        digest.update(f"{name}:{tuple(mask.shape)};".encode())
        digest.update(mask.numpy().tobytes())
    return digest.hexdigest()


def assert_same_across_ranks(value_hash: str, what: str = "pruning masks") -> None:
    """Check that every rank holds the same value (compared by hash); no-op in one process.

    Args:
        value_hash: a string identifying the value on this rank, e.g. `mask_fingerprint(model)`.
        what: the value's name in the error message.

    Raises:
        SpaError: on every rank, naming the ranks whose value differs from rank 0's.
    """
    if not is_distributed():
        return
    try:  # a SHA-256 hex digest travels as is, so the error shows the callers' values
        digest = bytes.fromhex(value_hash) if len(value_hash) == 64 else b""
    except ValueError:
        digest = b""
    digest = digest or hashlib.sha256(value_hash.encode()).digest()
    device = _communication_device()
    mine = torch.tensor(list(digest), dtype=torch.uint8, device=device)
    gathered = [torch.empty_like(mine) for _ in range(current_world_size())]
    with collective_errors(f"comparing {what} across ranks"):
        dist.all_gather(gathered, mine)
    hashes = [bytes(t.cpu().tolist()).hex() for t in gathered]
    differing = [rank for rank, value in enumerate(hashes) if value != hashes[0]]
    if differing:
        shown = ", ".join(f"rank {rank}: {hashes[rank][:12]}" for rank in [0, *differing])
        raise SpaError(
            f"{what} differ across ranks: rank(s) {differing} disagree with rank 0 ({shown}); "
            "every rank must decide identically - pass reduce_fn=spa.distributed."
            "all_reduce_statistics to the scoring step and seed all ranks alike"
        )


def broadcast_from_main(value: Value) -> Value:
    """Rank 0's `value` on every rank (e.g. a metrics record only rank 0 could measure).

    Uses `torch.distributed.broadcast_object_list` (pickle between this run's own processes;
    never use it on data from elsewhere). Identity in a single process.

    Args:
        value: a picklable value; ignored on ranks other than 0.

    Returns:
        Rank 0's value.

    Raises:
        SpaError: if a rank fails during the broadcast.
    """
    if not is_distributed():
        return value
    holder = [value]
    with collective_errors("receiving rank 0's results"):
        dist.broadcast_object_list(holder, src=0, device=_communication_device())
    return holder[0]


def synchronise_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics, masks) to every rank, in place.

    DDP broadcasts buffers at the start of each forward, so after the last training step each
    rank's BatchNorm statistics include its own last sub-batch; call this before evaluating or
    saving so all ranks hold rank 0's model. No-op in a single process.

    Args:
        model: a (possibly DDP-wrapped) model with the same buffers on every rank.

    Raises:
        SpaError: if a rank fails during the broadcast.
    """
    if not is_distributed():
        return
    model = unwrap_model(model)
    device = _communication_device()
    with collective_errors("synchronising buffers from rank 0"):
        for buffer in model.buffers():
            if buffer.device == device:
                dist.broadcast(buffer, src=0)
            else:
                moved = buffer.to(device)
                dist.broadcast(moved, src=0)
                buffer.copy_(moved)
