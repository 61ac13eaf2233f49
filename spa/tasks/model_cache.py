"""`ModelCache`: materialised task models under a byte budget, least recently used evicted first,
with per-task statistics (hits, builds, build time, bytes).

The cache itself is not thread-safe; `TaskHost` calls it under its own lock.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch
from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskStats:
    """What serving one task has cost so far (a snapshot).

    Attributes:
        hits: calls served by a cached model.
        builds: times the task model was materialised.
        build_seconds: total time spent materialising it.
        bytes: bytes the task model holds beyond the shared base (its last build; 0 before).
        evictions: times it was dropped from the cache.
        cached: whether the model is in the cache now.
    """

    hits: int = 0
    builds: int = 0
    build_seconds: float = 0.0
    bytes: int = 0
    evictions: int = 0
    cached: bool = False


def storage_keys(tensors: Iterable[torch.Tensor]) -> set[tuple[str, int]]:
    """(device, address) of the storage behind each tensor, to tell shared storage apart."""
    return {(str(t.device), t.untyped_storage().data_ptr()) for t in tensors}


def own_bytes(model: nn.Module, shared: set[tuple[str, int]]) -> int:
    """Bytes of the storages behind `model`'s tensors that are not in `shared` (the base's).

    Each storage counts once, whole (a view keeps all of its storage alive).
    """
    seen: dict[tuple[str, int], int] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr())
        if key not in shared:
            seen[key] = storage.nbytes()
    return sum(seen.values())


class ModelCache:
    """Task models by name, bounded by a count and a byte budget; LRU eviction.

    A model larger than the whole byte budget is not cached (every call builds it; a warning
    is logged once per task). Not thread-safe.

    Args:
        max_models: most models kept (None: no count limit).
        max_bytes: most bytes (beyond the shared base) kept over all models (None: no limit).
    """

    def __init__(self, max_models: int | None, max_bytes: int | None) -> None:
        self.max_models = max_models
        self.max_bytes = max_bytes
        self._models: OrderedDict[str, tuple[nn.Module, int]] = OrderedDict()
        self._stats: dict[str, TaskStats] = {}
        self._warned: set[str] = set()

    @property
    def total_bytes(self) -> int:
        """Bytes of all cached models."""
        return sum(size for _, size in self._models.values())

    def names(self) -> list[str]:
        """Cached task names, least recently used first."""
        return list(self._models)

    def get(self, name: str) -> nn.Module | None:
        """The cached model of `name` (counted as a hit and made most recent), or None."""
        found = self._models.get(name)
        if found is None:
            return None
        self._models.move_to_end(name)
        self._update(name, hits=self.stats(name).hits + 1)
        return found[0]

    def record_build(self, name: str, seconds: float, size: int) -> None:
        """Count one build of `name` that took `seconds` and holds `size` bytes."""
        old = self.stats(name)
        self._update(
            name, builds=old.builds + 1, build_seconds=old.build_seconds + seconds, bytes=size
        )

    def put(self, name: str, model: nn.Module, size: int) -> None:
        """Cache `model` (`size` bytes) as `name`, evicting least recently used models first."""
        self._models.pop(name, None)
        if self.max_bytes is not None and size > self.max_bytes:
            if name not in self._warned:
                self._warned.add(name)
                logger.warning(
                    "task %r needs %d bytes, more than the whole cache budget (%d): it is "
                    "rebuilt on every call",
                    name,
                    size,
                    self.max_bytes,
                )
            return
        while self._models and (
            (self.max_models is not None and len(self._models) >= self.max_models)
            or (self.max_bytes is not None and self.total_bytes + size > self.max_bytes)
        ):
            evicted, _ = self._models.popitem(last=False)
            self._update(evicted, evictions=self.stats(evicted).evictions + 1)
            logger.debug("evicted task %r from the cache", evicted)
        self._models[name] = (model, size)

    def forget(self, name: str) -> None:
        """Drop `name`'s model and statistics."""
        self._models.pop(name, None)
        self._stats.pop(name, None)
        self._warned.discard(name)

    def stats(self, name: str) -> TaskStats:
        """A snapshot of `name`'s statistics."""
        stats = self._stats.get(name, TaskStats())
        cached = name in self._models
        return stats if stats.cached == cached else replace(stats, cached=cached)

    def _update(self, name: str, **changes: float) -> None:
        self._stats[name] = replace(self._stats.get(name, TaskStats()), **changes)
