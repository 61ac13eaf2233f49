"""Launch detection, backend/timeout choice, rank queries and rank-0-only writes."""

from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as dist

from spa.distributed import (
    DistributedContext,
    barrier,
    collective_errors,
    current_context,
    current_rank,
    current_world_size,
    default_backend,
    init_distributed,
    is_distributed,
    is_main_process,
    launch_environment,
    main_process_only,
    shutdown_distributed,
)
from spa.distributed.process_group import _resolve_backend, _resolve_timeout
from spa.errors import ConfigError, SpaError

TORCHRUN = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}


def test_launch_environment_reads_torchrun_variables():
    assert launch_environment(TORCHRUN) == {"rank": 1, "world_size": 4, "local_rank": 1}


def test_launch_environment_none_without_torchrun():
    assert launch_environment({"PATH": "/bin"}) is None


def test_launch_environment_rejects_partial_variables():
    with pytest.raises(ConfigError, match="RANK, WORLD_SIZE set but LOCAL_RANK missing"):
        launch_environment({"RANK": "0", "WORLD_SIZE": "2"})


def test_launch_environment_rejects_rank_outside_world():
    with pytest.raises(ConfigError, match="RANK=2 WORLD_SIZE=2"):
        launch_environment({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


def test_launch_environment_rejects_non_integers():
    with pytest.raises(ConfigError, match="non-integer"):
        launch_environment({"RANK": "zero", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


def test_default_backend_follows_cuda():
    assert default_backend() == ("nccl" if torch.cuda.is_available() else "gloo")


def test_backend_argument_beats_environment():
    assert _resolve_backend("gloo", {"SPA_DIST_BACKEND": "nccl"}) == "gloo"


def test_backend_from_environment():
    assert _resolve_backend(None, {"SPA_DIST_BACKEND": "gloo"}) == "gloo"


def test_backend_unknown_rejected():
    with pytest.raises(ConfigError, match="unknown 'mpich'; allowed: gloo, nccl"):
        _resolve_backend("mpich", {})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_backend_nccl_without_gpu_rejected():
    with pytest.raises(ConfigError, match="'nccl' needs CUDA GPUs.*SPA_DIST_BACKEND=gloo"):
        _resolve_backend("nccl", {})


def test_timeout_default_argument_and_environment():
    assert _resolve_timeout(None, {}) == 1800.0
    assert _resolve_timeout(None, {"SPA_DIST_TIMEOUT": "12.5"}) == 12.5
    assert _resolve_timeout(3, {"SPA_DIST_TIMEOUT": "12.5"}) == 3.0


def test_timeout_invalid_rejected():
    with pytest.raises(ConfigError, match="SPA_DIST_TIMEOUT: expected seconds, got 'soon'"):
        _resolve_timeout(None, {"SPA_DIST_TIMEOUT": "soon"})
    with pytest.raises(ConfigError, match="must be > 0 seconds, got 0"):
        _resolve_timeout(0, {})


def test_single_process_helpers_without_launch():
    context = init_distributed(environ={})
    assert context == DistributedContext(0, 1, 0, None, torch.device("cpu"))
    assert not context.is_distributed and context.is_main_process
    assert not is_distributed()
    assert (current_rank(), current_world_size(), is_main_process()) == (0, 1, True)
    barrier()  # no-op


def test_main_process_only_runs_on_rank_zero():
    calls = []

    @main_process_only
    def write(value):
        calls.append(value)
        return value * 2

    assert write(3) == 6 and calls == [3]
    assert write.__name__ == "write"


def test_collective_errors_names_rank_operation_and_cause(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(SpaError, match=r"rank 3: saving things failed \(peer gone\).*logs"):
        with collective_errors("saving things"):
            raise RuntimeError("peer gone\nmore detail")


def test_collective_errors_leaves_other_errors_alone():
    with pytest.raises(KeyError):
        with collective_errors("anything"):
            raise KeyError("x")


def test_init_distributed_joins_group_with_backend_and_timeout(world_of_one):
    assert world_of_one == DistributedContext(0, 1, 0, "gloo", torch.device("cpu"))
    assert is_distributed() and dist.get_backend() == "gloo"
    group = dist.distributed_c10d._get_default_group()
    assert group._get_backend(torch.device("cpu")).options._timeout == datetime.timedelta(
        seconds=30
    )
    assert init_distributed() == world_of_one  # a second call reuses the group
    assert current_context() == world_of_one
    barrier("the test")


def test_shutdown_distributed_leaves_the_group(world_of_one):
    shutdown_distributed()
    assert not is_distributed()
    shutdown_distributed()  # idempotent
