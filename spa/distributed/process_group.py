"""Process-group set-up for `torchrun` launches, rank queries and the rank-0-writes rule.

`torchrun` starts one process per device and sets `RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
`MASTER_ADDR` and `MASTER_PORT`; `init_distributed` reads them and joins the default process
group ("env://"). Without them it does nothing and every helper behaves as in a single process,
so the same code path serves both.

A dead or stuck rank must not make the others hang: the group is created with a `timeout`, and
`collective_errors` turns the backend's low-level failure (gloo: "Connection closed by peer" or
"Timed out waiting ...") into a `SpaError` that says which rank saw it and what to check. With
nccl the watchdog aborts the process when a collective exceeds the timeout (PyTorch's default
`TORCH_NCCL_ASYNC_ERROR_HANDLING`); `torchrun` then stops the remaining workers.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, ParamSpec, TypeVar

import torch
import torch.distributed as dist

from spa.errors import ConfigError, SpaError

logger = logging.getLogger(__name__)

Backend = Literal["gloo", "nccl"]
BACKENDS: tuple[str, ...] = ("gloo", "nccl")
LAUNCH_VARIABLES: tuple[str, ...] = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# Environment overrides, so `torchrun ... -m spa run CONFIG` can change them without a flag.
BACKEND_VARIABLE = "SPA_DIST_BACKEND"
TIMEOUT_VARIABLE = "SPA_DIST_TIMEOUT"
# Long enough for rank 0 to write bundles and measure latency while the others wait at a barrier.
DEFAULT_TIMEOUT_S = 1800.0

Parameters = ParamSpec("Parameters")
Result = TypeVar("Result")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a (possibly single-process) run.

    Args:
        rank: global rank, 0 in a single process.
        world_size: number of processes, 1 in a single process.
        local_rank: rank on this node (selects the GPU), 0 in a single process.
        backend: "gloo" or "nccl"; None when no process group is used.
        device: the device this rank computes on (its own GPU with nccl, else the CPU).
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str | None
    device: torch.device

    @property
    def is_distributed(self) -> bool:
        """True when a process group connects this process to others."""
        return self.backend is not None

    @property
    def is_main_process(self) -> bool:
        """True on rank 0, the only rank that writes files."""
        return self.rank == 0


def launch_environment(environ: Mapping[str, str] | None = None) -> dict[str, int] | None:
    """Read the variables `torchrun` sets; None when the process was not started by it.

    Args:
        environ: the environment; `os.environ` if omitted.

    Returns:
        `{"rank", "world_size", "local_rank"}` as integers, or None.

    Raises:
        ConfigError: if only some of the variables are set or a value is not a valid rank.
    """
    environ = os.environ if environ is None else environ
    present = [name for name in LAUNCH_VARIABLES if name in environ]
    if not present:
        return None
    if len(present) != len(LAUNCH_VARIABLES):
        missing = sorted(set(LAUNCH_VARIABLES) - set(present))
        raise ConfigError(
            f"distributed launch: {', '.join(present)} set but {', '.join(missing)} missing; "
            "start the run with `torchrun --nproc-per-node N -m spa run CONFIG` or unset them"
        )
    try:
        values = {name.lower(): int(environ[name]) for name in LAUNCH_VARIABLES}
    except ValueError:
        shown = {name: environ[name] for name in LAUNCH_VARIABLES}
        raise ConfigError(f"distributed launch: non-integer values {shown}") from None
    if values["world_size"] < 1 or not 0 <= values["rank"] < values["world_size"]:
        raise ConfigError(
            f"distributed launch: need 0 <= RANK < WORLD_SIZE, got RANK={values['rank']} "
            f"WORLD_SIZE={values['world_size']}"
        )
    return values


def default_backend() -> Backend:
    """nccl when CUDA is available, else gloo (the CPU backend)."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def _resolve_backend(backend: str | None, environ: Mapping[str, str]) -> str:
    backend = backend or environ.get(BACKEND_VARIABLE) or default_backend()
    if backend not in BACKENDS:
        raise ConfigError(
            f"distributed backend: unknown {backend!r}; allowed: {', '.join(BACKENDS)} "
            f"(set by the argument or {BACKEND_VARIABLE})"
        )
    if backend == "nccl" and not torch.cuda.is_available():
        raise ConfigError(
            "distributed backend: 'nccl' needs CUDA GPUs, none is available here; "
            f"use 'gloo' (e.g. {BACKEND_VARIABLE}=gloo) for CPU training"
        )
    return backend


def _resolve_timeout(timeout_s: float | None, environ: Mapping[str, str]) -> float:
    if timeout_s is None:
        text = environ.get(TIMEOUT_VARIABLE)
        try:
            timeout_s = float(text) if text else DEFAULT_TIMEOUT_S
        except ValueError:
            raise ConfigError(f"{TIMEOUT_VARIABLE}: expected seconds, got {text!r}") from None
    if not timeout_s > 0:
        raise ConfigError(f"distributed timeout: must be > 0 seconds, got {timeout_s!r}")
    return float(timeout_s)


def current_context() -> DistributedContext:
    """The context of the already-initialised default group, or the single-process one.

    Returns:
        Rank, world size, local rank, backend and device of this process.
    """
    if not is_distributed():
        return DistributedContext(0, 1, 0, None, torch.device("cpu"))
    backend = str(dist.get_backend())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, backend, device)


def init_distributed(
    backend: str | None = None,
    timeout_s: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> DistributedContext:
    """Join the default process group when launched by `torchrun`; otherwise do nothing.

    The backend is `backend`, else `$SPA_DIST_BACKEND`, else nccl with CUDA and gloo without.
    With nccl, this process's GPU (`cuda:LOCAL_RANK`) becomes the current device. Calling it
    again returns the existing group's context.

    Args:
        backend: "gloo" or "nccl"; None chooses as above.
        timeout_s: seconds a collective may wait for the other ranks before failing; None uses
            `$SPA_DIST_TIMEOUT` or 1800 s.
        environ: the environment; `os.environ` if omitted.

    Returns:
        This process's context.

    Raises:
        ConfigError: for an inconsistent launch environment, an unknown backend, nccl without
            GPUs or a non-positive timeout.
        SpaError: if the other ranks do not join within the timeout.
    """
    environ = os.environ if environ is None else environ
    if is_distributed():
        return current_context()
    launch = launch_environment(environ)
    if launch is None:
        return current_context()
    backend = _resolve_backend(backend, environ)
    timeout = datetime.timedelta(seconds=_resolve_timeout(timeout_s, environ))
    device = torch.device("cpu")
    options = {}
    if backend == "nccl":
        device = torch.device("cuda", launch["local_rank"])
        torch.cuda.set_device(device)
        options["device_id"] = device
    with collective_errors("joining the process group"):
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            timeout=timeout,
            rank=launch["rank"],
            world_size=launch["world_size"],
            **options,
        )
    logger.info(
        "joined process group: rank %d of %d (local rank %d), backend %s, timeout %s",
        launch["rank"],
        launch["world_size"],
        launch["local_rank"],
        backend,
        timeout,
    )
    return DistributedContext(
        launch["rank"], launch["world_size"], launch["local_rank"], backend, device
    )


@contextlib.contextmanager
def distributed_session(
    backend: str | None = None, timeout_s: float | None = None
) -> Iterator[DistributedContext]:
    """`init_distributed` for the duration of a block; leaves the group only if it joined it.

    Args:
        backend: see `init_distributed`.
        timeout_s: see `init_distributed`.

    Yields:
        This process's context (single-process without `torchrun`).

    Raises:
        ConfigError: see `init_distributed`.
        SpaError: see `init_distributed`.
    """
    joined = not is_distributed()
    context = init_distributed(backend, timeout_s)
    succeeded = False
    try:
        yield context
        succeeded = True
    finally:
        if joined and context.is_distributed:
            shutdown_distributed(synchronise=succeeded)


def shutdown_distributed(synchronise: bool = True) -> None:
    """Leave and destroy the default process group, if there is one.

    Args:
        synchronise: wait at a barrier first, so no rank tears its connections down while a
            peer still finishes a collective (gloo then aborts the peer at exit). Pass False
            after an error: the other ranks may never reach the barrier.
    """
    if not is_distributed():
        return
    if synchronise:
        with collective_errors("the final barrier before leaving the process group"):
            dist.barrier()
    dist.destroy_process_group()


def is_distributed() -> bool:
    """True when the default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def current_rank() -> int:
    """This process's global rank (0 in a single process)."""
    return dist.get_rank() if is_distributed() else 0


def current_world_size() -> int:
    """Number of processes in the run (1 in a single process)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0 (always in a single process): the only rank that writes files."""
    return current_rank() == 0


def main_process_only(function: Callable[Parameters, Result]) -> Callable[..., Result | None]:
    """Decorate a file-writing function so it runs on rank 0 only (returns None elsewhere).

    Other ranks do not wait for it; call `barrier` before they read what rank 0 wrote.

    Args:
        function: the function to guard.

    Returns:
        The guarded function.
    """

    @functools.wraps(function)
    def guarded(*args: Parameters.args, **kwargs: Parameters.kwargs) -> Result | None:
        if not is_main_process():
            return None
        return function(*args, **kwargs)

    return guarded


def barrier(what: str = "barrier") -> None:
    """Wait until every rank gets here (no-op in a single process).

    Args:
        what: what the ranks are waiting for, named in the error if a rank never arrives.

    Raises:
        SpaError: if another rank failed or did not arrive within the timeout.
    """
    if not is_distributed():
        return
    with collective_errors(what):
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


@contextlib.contextmanager
def collective_errors(what: str) -> Iterator[None]:
    """Re-raise a failed collective (dead peer, timeout) as a `SpaError` naming the rank.

    Args:
        what: the operation, e.g. "all-reducing pruning statistics".

    Raises:
        SpaError: chained to the backend's error.
    """
    try:
        yield
    except RuntimeError as error:  # DistBackendError and gloo's transport errors
        if isinstance(error, SpaError):
            raise
        rank = current_rank() if is_distributed() else os.environ.get("RANK", "?")
        raise SpaError(
            f"rank {rank}: {what} failed ({_first_line(error)}); another rank probably "
            "crashed or stopped responding within the process-group timeout - check the other "
            f"ranks' logs (raise {TIMEOUT_VARIABLE} if ranks legitimately wait longer)"
        ) from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
