"""Multi-process training on PyTorch's own engine: `torchrun` + `DistributedDataParallel`.

Launch with `torchrun --nproc-per-node N -m spa run CONFIG` (see docs/distributed.md). The
pieces: `init_distributed` joins the process group (gloo on CPU, nccl on GPU, with a timeout so a
dead rank stops the run instead of hanging it); `distributed_loader` shards the data keeping the
config's global batch; `wrap_model` / `rewrap_after_compaction` manage the DDP wrapper and the
optimiser; `all_reduce_statistics` (a `reduce_fn` for `spa.pruning.score`) makes every rank rank
the same criterion statistics, and `mask_fingerprint` + `assert_same_across_ranks` verify that
all ranks hold identical masks; `is_main_process` / `main_process_only` keep file writes on rank 0.
"""

from spa.distributed.collectives import (
    MASK_BUFFER_NAMES,
    all_reduce_gradients,
    all_reduce_statistics,
    assert_same_across_ranks,
    broadcast_from_main,
    mask_fingerprint,
    synchronise_buffers,
)
from spa.distributed.process_group import (
    DEFAULT_TIMEOUT_S,
    DistributedContext,
    barrier,
    collective_errors,
    current_context,
    current_rank,
    current_world_size,
    default_backend,
    distributed_session,
    init_distributed,
    is_distributed,
    is_main_process,
    launch_environment,
    main_process_only,
    shutdown_distributed,
)
from spa.distributed.training import (
    PAPER_LEARNING_RATE,
    PAPER_REFERENCE_BATCH_SIZE,
    distributed_loader,
    per_device_batch_size,
    rewrap_after_compaction,
    scale_learning_rate,
    unused_parameters,
    unwrap_model,
    wrap_model,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "MASK_BUFFER_NAMES",
    "PAPER_LEARNING_RATE",
    "PAPER_REFERENCE_BATCH_SIZE",
    "DistributedContext",
    "all_reduce_gradients",
    "all_reduce_statistics",
    "assert_same_across_ranks",
    "barrier",
    "broadcast_from_main",
    "collective_errors",
    "current_context",
    "current_rank",
    "current_world_size",
    "default_backend",
    "distributed_loader",
    "distributed_session",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "launch_environment",
    "main_process_only",
    "mask_fingerprint",
    "per_device_batch_size",
    "rewrap_after_compaction",
    "scale_learning_rate",
    "shutdown_distributed",
    "synchronise_buffers",
    "unused_parameters",
    "unwrap_model",
    "wrap_model",
]
