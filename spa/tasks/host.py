"""`TaskHost`: one shared base model, many task bundles, switch tasks at run time."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from spa.adapters.protocols import is_adapted
from spa.errors import BundleError, ConfigError
from spa.flops import count_flops
from spa.tasks.fingerprint import fingerprint
from spa.tasks.format import Bundle, read_bundle
from spa.tasks.load import plan_task
from spa.tasks.scratch import Scratch
from spa.tasks.signing import KeySource, trusted_key_set, verify_bundle
from spa.tasks.switch import SwitchPlan, compile_switch

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


class TaskHost:
    """Keeps one copy of the base weights and serves any number of task bundles.

    PEFT-style verbs: `add_task(name, path)` validates a bundle against the base and registers
    it, `set_task(name)` activates it, `delete_task(name)` forgets it, `tasks` lists them, and
    calling the host runs the active task (under `torch.no_grad`). Each bundle is read and
    validated once, in `add_task`, and compiled into a `SwitchPlan` (its small tensors and kept
    channel indices stay in memory). A task's fused, compacted model is materialised on first
    use from the shared base tensors (only what the task changed is allocated; the base is
    never copied or modified) and kept in an LRU cache of `cache_size` models.

    Example:
        >>> host = TaskHost(base_model)
        >>> host.add_task("cifar", "cifar.safetensors")
        >>> host.set_task("cifar")
        >>> logits = host(images)

    Args:
        base_model: the plain base model; it must not be modified while the host uses it.
        cache_size: how many materialised task models to keep (>= 1).
        example_inputs: positional inputs of one forward pass, used to count FLOPs in `report`
            and to run every added task once, so `add_task` refuses a bundle whose model
            cannot run.
        finalize: applied to every materialised task model (e.g. a structured compaction of
            block-pruned transformer heads/FFNs that plain layers cannot express); None = as is.
        trusted_keys: Ed25519 public keys (objects, PEM file paths or PEM bytes); when given,
            `add_task` refuses bundles that are not signed by one of them. None accepts
            unsigned bundles.

    Raises:
        ConfigError: for an adapted base model, a cache size below 1 or an unreadable key.
    """

    def __init__(
        self,
        base_model: nn.Module,
        cache_size: int = 4,
        example_inputs: tuple | None = None,
        finalize: Callable[[nn.Module], nn.Module] | None = None,
        trusted_keys: KeySource | Iterable[KeySource] | None = None,
    ) -> None:
        if is_adapted(base_model):
            raise ConfigError("TaskHost: base_model contains adapter layers; pass the plain base")
        if not isinstance(cache_size, int) or cache_size < 1:
            raise ConfigError(f"TaskHost: cache_size must be an integer >= 1, got {cache_size!r}")
        self.base_model = base_model
        self.cache_size = cache_size
        self.example_inputs = example_inputs
        self.finalize = finalize
        self._trusted = None if trusted_keys is None else trusted_key_set(trusted_keys)
        self.base_fingerprint = fingerprint(base_model)
        self._bundles: dict[str, Bundle] = {}
        self._plans: dict[str, SwitchPlan] = {}
        self._scratch = Scratch()
        self._cache: OrderedDict[str, nn.Module] = OrderedDict()
        self._flops: dict[str, int] = {}
        self._active: str | None = None

    @property
    def tasks(self) -> list[str]:
        """Names of the registered tasks, in registration order."""
        return list(self._bundles)

    @property
    def active_task(self) -> str | None:
        """The task `__call__` runs (None before `set_task`)."""
        return self._active

    def add_task(self, name: str, path: str | os.PathLike) -> None:
        """Read, validate and register the bundle at `path` under `name`.

        The bundle is checked completely against the base (signature when the host has trusted
        keys, every field, fingerprint, layers, shapes) and, with example inputs, its model is
        run once; on any error nothing is registered and the host keeps serving its other tasks.

        Args:
            name: a new task name.
            path: a bundle written by `spa.save_task`.

        Raises:
            ConfigError: if `name` is already registered.
            BundleError: if the bundle is damaged, does not fit the base, or (with trusted
                keys) is unsigned or not signed by a trusted key.
        """
        if name in self._bundles:
            raise ConfigError(f"TaskHost: task {name!r} is already registered; delete_task first")
        bundle = read_bundle(path)
        if self._trusted is not None:
            verify_bundle(bundle, self._trusted)
        plan = compile_switch(
            self.base_model,
            plan_task(self.base_model, bundle, base_fingerprint=self.base_fingerprint),
        )
        if self.example_inputs is not None:
            self._dry_run(plan, path)
        # The compiled plan holds what builds need; keep only the bundle's description.
        self._bundles[name] = replace(bundle, tensors={}, used=set())
        self._plans[name] = plan
        logger.info("registered task %r from %s (%d bytes)", name, path, bundle.size_bytes)

    def _dry_run(self, plan: SwitchPlan, path: str | os.PathLike) -> None:
        """Build the task model once and run it on the example inputs.

        Structural validation checks each entry against the base, but not how the channel
        counts of different modules chain in the forward pass (that needs inputs); a bundle
        whose entries were rewritten together into a model that cannot run is refused here.
        """
        model = plan.build(self._scratch, self.finalize)
        try:
            with torch.no_grad():
                model(*self.example_inputs)
        except Exception as error:  # any failure of the forward pass is the bundle's fault
            raise BundleError(
                f"{path}: the task model does not run on the host's example inputs "
                f"({type(error).__name__}: {error}); the bundle is inconsistent"
            ) from error

    def _bundle(self, name: str) -> Bundle:
        if name not in self._bundles:
            known = ", ".join(self._bundles) or "(none)"
            raise ConfigError(f"TaskHost: unknown task {name!r}; registered tasks: {known}")
        return self._bundles[name]

    def model(self, name: str | None = None) -> nn.Module:
        """The materialised task model of `name` (default: the active task), cached.

        Raises:
            ConfigError: for an unknown task, or no active task when `name` is None.
        """
        if name is None:
            if self._active is None:
                raise ConfigError("TaskHost: no active task; call set_task(name) first")
            name = self._active
        self._bundle(name)
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        # Evict first, so the host never holds more than cache_size models at once.
        while len(self._cache) >= self.cache_size:
            evicted, _ = self._cache.popitem(last=False)
            logger.debug("evicted task %r from the cache", evicted)
        model = self._plans[name].build(self._scratch, self.finalize)
        self._cache[name] = model
        return model

    def set_task(self, name: str) -> None:
        """Make `name` the active task, materialising its model if it is not cached.

        Raises:
            ConfigError: for an unknown task.
        """
        self.model(name)
        self._active = name

    def delete_task(self, name: str) -> None:
        """Forget task `name` (and its cached model); it stops being active if it was.

        Raises:
            ConfigError: for an unknown task.
        """
        self._bundle(name)
        del self._bundles[name], self._plans[name]
        self._cache.pop(name, None)
        self._flops.pop(name, None)
        if self._active == name:
            self._active = None

    def cached_tasks(self) -> list[str]:
        """Tasks whose models are materialised, least recently used first."""
        return list(self._cache)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the active task's model on the inputs, without autograd.

        Raises:
            ConfigError: if no task is active.
        """
        model = self.model()
        with torch.no_grad():
            return model(*args, **kwargs)

    def report(self, name: str | None = None) -> TaskReport:
        """Bytes on disk, dParams, density and FLOPs of task `name` (default: the active one).

        FLOPs need `example_inputs` (given to the constructor); they are counted once per task.

        Raises:
            ConfigError: for an unknown task.
        """
        name = self._active if name is None else name
        bundle = self._bundle(name)
        metadata = bundle.metadata
        if name not in self._flops and self.example_inputs is not None:
            self._flops[name] = count_flops(self.model(name), tuple(self.example_inputs))
        adapter = metadata.get("adapter")
        return TaskReport(
            name=name,
            path=str(bundle.path),
            bytes_on_disk=bundle.size_bytes,
            dparams=int(metadata["dparams"]),
            density=float(metadata["density"]),
            flops=self._flops.get(name),
            adapter=adapter["type"] if adapter else None,
        )

    def reports(self) -> dict[str, TaskReport]:
        """`report` of every registered task."""
        return {name: self.report(name) for name in self._bundles}

    def __repr__(self) -> str:
        return (
            f"TaskHost(base={type(self.base_model).__name__}, tasks={self.tasks}, "
            f"active={self._active!r}, cached={self.cached_tasks()})"
        )
