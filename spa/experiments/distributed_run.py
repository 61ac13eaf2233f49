"""The runner's distributed-only steps: launch checks and pruning agreed on by every rank."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from torch import nn

from spa import distributed
from spa.errors import ConfigError
from spa.experiments.config import ExperimentConfig
from spa.experiments.pruning_steps import ChannelPruner

if TYPE_CHECKING:
    from spa.experiments.task_types import TaskType

logger = logging.getLogger(__name__)


def check_distributed(
    config: ExperimentConfig,
    context: distributed.DistributedContext,
    task_type: TaskType | None = None,
) -> None:
    """Refuse configs a distributed run cannot serve (no-op in a single process).

    Args:
        config: the experiment config.
        context: this process's distributed context.
        task_type: the config's task type (looked up from `data.name` if omitted).

    Raises:
        ConfigError: for a global batch not divisible by the world size, a task type without
            distributed support (e.g. question answering), or a non-CUDA `train.device` with
            the nccl backend.
    """
    if not context.is_distributed:
        return
    distributed.per_device_batch_size(config.data.batch_size, context.world_size)
    if task_type is None:
        from spa.experiments.task_types import task_type_for  # the task types import this module

        task_type = task_type_for(config)
    if not task_type.supports_distributed:
        raise ConfigError(
            f"data.name={config.data.name!r}: distributed runs do not support the "
            f"{task_type.name!r} task type; run it without torchrun"
        )
    if context.backend == "nccl" and not config.train.device.startswith("cuda"):
        raise ConfigError(
            f"train.device={config.train.device!r} with the nccl backend: set train.device='cuda' "
            "(each rank uses cuda:LOCAL_RANK) or SPA_DIST_BACKEND=gloo for CPU training"
        )


def prune_on_all_ranks(
    model: nn.Module, pruner: ChannelPruner, density: float, data: Iterable
) -> None:
    """Mask `model` to `density` from criterion statistics all-reduced over the ranks.

    In a single process this is `pruner.prune_to`. Distributed, every rank scores its shard,
    the statistics are averaged before ranking, and the masks' fingerprints are compared.

    Args:
        model: the adapted (unwrapped) model.
        pruner: the seed's channel pruner (it records the masks for the checkpoint).
        density: target density.
        data: this rank's scoring batches.

    Raises:
        SpaError: if the ranks' masks differ or a rank fails.
    """
    pruner.prune_to(model, density, data, reduce_fn=distributed.all_reduce_statistics)
    fingerprint = distributed.mask_fingerprint(model)
    logger.info(
        "rank %d: masks at density %.3f have fingerprint %s",
        distributed.current_rank(),
        density,
        fingerprint,
    )
    distributed.assert_same_across_ranks(fingerprint)
