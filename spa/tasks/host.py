"""`TaskHost`: one shared base model, many task bundles, any task per call, safe across threads."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from spa.adapters.protocols import is_adapted
from spa.errors import BundleError, ConfigError
from spa.flops import count_flops
from spa.tasks.base_guard import BaseGuard
from spa.tasks.expert_view import split_view
from spa.tasks.format import Bundle, read_bundle
from spa.tasks.load import plan_task
from spa.tasks.model_cache import ModelCache, TaskStats, own_bytes
from spa.tasks.scratch import ScratchPool
from spa.tasks.signing import KeySource, trusted_key_set, verify_bundle
from spa.tasks.switch import SwitchPlan, compile_switch
from spa.tasks.task_names import check_task_name, recorded_task_name

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskReport:
    """What one registered task costs and saves.

    Attributes:
        name: the task's name in the host.
        path: the bundle file.
        bytes_on_disk: size of the bundle file.
        dparams: learned parameters of the task (DESIGN §2).
        density: fraction of the adapted layers' base weights the task keeps.
        flops: FLOPs of one forward pass on the host's example inputs (`spa.flops.count_flops`:
            a multiply-add counts as 2); None without example inputs.
        adapter: adapter config class name (None for a bundle saved without `spa.adapt`).
    """

    name: str
    path: str
    bytes_on_disk: int
    dparams: int
    density: float
    flops: int | None
    adapter: str | None


@dataclass
class _Task:
    """A registered task: its bundle's description, its compiled plan, its build lock."""

    bundle: Bundle
    plan: SwitchPlan
    build_lock: threading.Lock = field(default_factory=threading.Lock)
    flops: int | None = None


class TaskHost:
    """Keeps one copy of the base weights and serves any number of task bundles.

    PEFT-style verbs: `add_task(name, path)` validates a bundle against the base and registers
    it, `delete_task(name)` forgets it, `tasks` lists them; `host(name, inputs)` runs task
    `name` (under `torch.no_grad`) and `host.model(name)` returns its model. Each bundle is read
    and validated once, in `add_task`, and compiled into a `SwitchPlan`. A task's fused,
    compacted model is materialised on first use from the shared base tensors (only what the
    task changed is allocated; the base is never copied or modified) and kept in a cache bounded
    by `cache_size` models and `cache_bytes` bytes, least recently used evicted first;
    `stats(name)` counts hits, builds, build time and bytes per task.

    Thread safety: a `TaskHost` may be shared between threads when every call names its task
    (`host(name, inputs)`, `host.model(name)`, `report(name)`): builds of different tasks run
    concurrently with their own work buffers, a task is built once however many threads ask for
    it, and a model once returned is never changed by any later build, eviction or deletion (it
    stays valid for as long as the caller holds it). `add_task` and `delete_task` may run while
    other threads serve. `set_task` and calls without a task name use one shared "active task"
    and are for single-threaded scripts only.

    The base's fingerprint is taken when the host is made; a base changed afterwards (its
    weights written, a tensor or sub-module replaced) is detected on the next call, which then
    refuses with a `ConfigError` (`verify_base` also catches writes through `tensor.data`).

    Example:
        >>> host = TaskHost(base_model, cache_bytes=2**30)
        >>> host.add_task("cifar", "cifar.safetensors")
        >>> logits = host("cifar", images)

    Args:
        base_model: the plain base model; it must not be modified while the host uses it.
        cache_size: most materialised task models kept (>= 1; None: no count limit).
        example_inputs: positional inputs of one forward pass, used to count FLOPs in `report`
            and to run every added task once, so `add_task` refuses a bundle whose model
            cannot run.
        finalize: applied to every materialised task model (e.g. a structured compaction of
            block-pruned transformer heads/FFNs that plain layers cannot express); None = as is.
        trusted_keys: Ed25519 public keys (objects, PEM file paths or PEM bytes); when given,
            `add_task` refuses bundles that are not signed by one of them. None accepts
            unsigned bundles.
        cache_bytes: most bytes (beyond the shared base) of all cached task models together;
            None: no byte limit. A model larger than the budget is rebuilt on every call.

    Raises:
        ConfigError: for an adapted base model, a bad cache limit or an unreadable key.
    """

    def __init__(
        self,
        base_model: nn.Module,
        cache_size: int | None = 4,
        example_inputs: tuple | None = None,
        finalize: Callable[[nn.Module], nn.Module] | None = None,
        trusted_keys: KeySource | Iterable[KeySource] | None = None,
        cache_bytes: int | None = None,
    ) -> None:
        if is_adapted(base_model):
            raise ConfigError("TaskHost: base_model contains adapter layers; pass the plain base")
        limits = (("cache_size", cache_size, 1), ("cache_bytes", cache_bytes, 0))
        for label, value, minimum in limits:
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < minimum
            ):
                raise ConfigError(
                    f"TaskHost: {label} must be None or an integer >= {minimum}, got {value!r}"
                )
        self.base_model = split_view(base_model)  # 3-D experts as spa.adapt split them
        self.example_inputs = example_inputs
        self.finalize = finalize
        self._trusted = None if trusted_keys is None else trusted_key_set(trusted_keys)
        self._guard = BaseGuard(self.base_model)
        self._tasks: dict[str, _Task] = {}
        self._cache = ModelCache(cache_size, cache_bytes)
        self._scratch = ScratchPool()
        self._lock = threading.RLock()  # guards _tasks and _cache; never held during a build
        self._active: str | None = None

    @property
    def base_fingerprint(self) -> str:
        """The base model's fingerprint, taken when the host was made."""
        return self._guard.fingerprint

    @property
    def tasks(self) -> list[str]:
        """Names of the registered tasks, in registration order."""
        with self._lock:
            return list(self._tasks)

    @property
    def active_task(self) -> str | None:
        """The task that calls without a task name run (None before `set_task`)."""
        return self._active

    def add_task(self, name: str, path: str | os.PathLike, *, rename: bool = False) -> None:
        """Read, validate and register the bundle at `path` under `name`.

        The bundle is checked completely against the base (signature when the host has trusted
        keys, every field, fingerprint, layers, shapes) and, with example inputs, its model is
        run once; on any error nothing is registered and the host keeps serving its other tasks.
        A signed bundle that records a task name is served under that name only, unless
        `rename` is True (a signed task copied over another task's file is refused).

        Args:
            name: a new task name (see `check_task_name`).
            path: a bundle written by `spa.save_task`.
            rename: serve a signed bundle recorded for another task under `name`.

        Raises:
            ConfigError: if `name` is not a valid name, is already registered, or the base
                model changed.
            BundleError: if the bundle is damaged, does not fit the base, (with trusted keys) is
                unsigned or not signed by a trusted key, or is signed for another task name.
        """
        check_task_name(name)
        self._check_new(name)
        self._guard.check()
        trusted = self._trusted  # with trusted keys, checked before the body is read
        check = None if trusted is None else lambda described: verify_bundle(described, trusted)
        bundle = read_bundle(path, check=check)
        recorded = recorded_task_name(bundle)
        if bundle.signature is not None and recorded not in (None, name) and not rename:
            raise BundleError(
                f"{path}: the signed bundle is recorded for task {recorded!r}, not {name!r}; "
                "pass rename=True to serve it under another name"
            )
        plan = compile_switch(
            self.base_model,
            plan_task(self.base_model, bundle, base_fingerprint=self.base_fingerprint),
        )
        if self.example_inputs is not None:
            self._dry_run(plan, path)
        # The compiled plan holds what builds need; keep only the bundle's description.
        task = _Task(replace(bundle, tensors={}, used=set()), plan)
        with self._lock:
            self._check_new(name)
            self._tasks[name] = task
        logger.info("registered task %r from %s (%d bytes)", name, path, bundle.size_bytes)

    def _check_new(self, name: str) -> None:
        with self._lock:
            if name in self._tasks:
                raise ConfigError(
                    f"TaskHost: task {name!r} is already registered; delete_task first"
                )

    def _dry_run(self, plan: SwitchPlan, path: str | os.PathLike) -> None:
        """Build the task model once and run it on the example inputs.

        Structural validation checks each entry against the base, but not how the channel
        counts of different modules chain in the forward pass (that needs inputs); a bundle
        whose entries were rewritten together into a model that cannot run is refused here.
        """
        with self._scratch.borrow() as scratch:
            model = plan.build(scratch, self.finalize)
        try:
            with torch.no_grad():
                model(*self.example_inputs)
        except Exception as error:  # any failure of the forward pass is the bundle's fault
            raise BundleError(
                f"{path}: the task model does not run on the host's example inputs "
                f"({type(error).__name__}: {error}); the bundle is inconsistent"
            ) from error

    def _task(self, name: str | None) -> tuple[str, _Task]:
        if name is None:
            name = self._active
            if name is None:
                raise ConfigError("TaskHost: no active task; call set_task(name) first")
        with self._lock:
            task = self._tasks.get(name)
            if task is None:
                known = ", ".join(self._tasks) or "(none)"
                raise ConfigError(f"TaskHost: unknown task {name!r}; registered tasks: {known}")
        return name, task

    def model(self, name: str | None = None) -> nn.Module:
        """The materialised model of task `name` (default: the active task), cached.

        Safe to call from many threads. The returned model is never modified by the host
        afterwards (later builds make new models; eviction and `delete_task` only drop the
        host's reference); run it under `torch.no_grad` and do not modify it.

        Raises:
            ConfigError: for an unknown task, no active task when `name` is None, or a base
                model that changed after the host was made.
        """
        name, task = self._task(name)
        self._guard.check()
        with self._lock:
            model = self._cache.get(name)
        if model is not None:
            return model
        with task.build_lock:  # one build per task at a time; other tasks build in parallel
            with self._lock:
                model = self._cache.get(name)  # built while this thread waited
            if model is not None:
                return model
            start = time.perf_counter()
            with self._scratch.borrow() as scratch:
                model = task.plan.build(scratch, self.finalize)
            seconds = time.perf_counter() - start
            size = own_bytes(model, self._guard.storages)
            with self._lock:
                if self._tasks.get(name) is task:  # not deleted or replaced meanwhile
                    self._cache.record_build(name, seconds, size)
                    self._cache.put(name, model, size)
        return model

    def set_task(self, name: str) -> None:
        """Make `name` the active task, materialising its model if it is not cached.

        For single-threaded scripts: the active task is shared by every thread using the host;
        concurrent code names the task in each call (`host(name, inputs)`).

        Raises:
            ConfigError: for an unknown task.
        """
        self.model(name)
        self._active = name

    def delete_task(self, name: str) -> None:
        """Forget task `name`, its cached model and statistics; it stops being active if it was.

        Models already returned by `model(name)` keep working.

        Raises:
            ConfigError: for an unknown task.
        """
        with self._lock:
            self._task(name)
            del self._tasks[name]
            self._cache.forget(name)
        if self._active == name:
            self._active = None

    def cached_tasks(self) -> list[str]:
        """Tasks whose models are materialised, least recently used first."""
        with self._lock:
            return self._cache.names()

    def stats(self, name: str) -> TaskStats:
        """Hits, builds, build time, bytes and evictions of task `name` so far.

        Raises:
            ConfigError: for an unknown task.
        """
        self._task(name)
        with self._lock:
            return self._cache.stats(name)

    @property
    def cache_bytes_used(self) -> int:
        """Bytes (beyond the shared base) of all cached task models."""
        with self._lock:
            return self._cache.total_bytes

    def verify_base(self) -> None:
        """Recompute the base's fingerprint and refuse further calls if it changed.

        Raises:
            ConfigError: if the base's weights are not the ones the host was made with.
        """
        self._guard.verify()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run a task's model on the inputs, without autograd: `host(name, *inputs)`.

        A first argument that is a string names the task (safe from many threads); without it
        the active task runs (`set_task`, single-threaded scripts only).

        Raises:
            ConfigError: for an unknown task, or no task named and none active.
        """
        name = None
        if args and isinstance(args[0], str):
            name, args = args[0], args[1:]
        model = self.model(name)
        with torch.no_grad():
            return model(*args, **kwargs)

    def report(self, name: str | None = None) -> TaskReport:
        """Bytes on disk, dParams, density and FLOPs of task `name` (default: the active one).

        FLOPs need `example_inputs` (given to the constructor); they are counted once per task.

        Raises:
            ConfigError: for an unknown task.
        """
        name, task = self._task(name)
        metadata = task.bundle.metadata
        if task.flops is None and self.example_inputs is not None:
            task.flops = count_flops(self.model(name), tuple(self.example_inputs))
        adapter = metadata.get("adapter")
        return TaskReport(
            name=name,
            path=str(task.bundle.path),
            bytes_on_disk=task.bundle.size_bytes,
            dparams=int(metadata["dparams"]),
            density=float(metadata["density"]),
            flops=task.flops,
            adapter=adapter["type"] if adapter else None,
        )

    def reports(self) -> dict[str, TaskReport]:
        """`report` of every registered task."""
        return {name: self.report(name) for name in self.tasks}

    def __repr__(self) -> str:
        return (
            f"TaskHost(base={type(self.base_model).__name__}, tasks={self.tasks}, "
            f"active={self._active!r}, cached={self.cached_tasks()})"
        )
