"""`BaseGuard`: notices when a host's base model changes after its tasks were validated.

Every task of a `TaskHost` was validated against the base weights' fingerprint, and every task
model shares the base's tensors; a base changed afterwards would serve silently wrong outputs
(issue 24). The guard takes the fingerprint once and a cheap snapshot of every base tensor (the
tensor object in its module's table and its version counter, which every in-place write through
a tensor bumps: `copy_`, `load_state_dict`, optimizer steps). `check` compares the snapshot (a
fraction of a millisecond for ResNet-50's 320 tensors); when it differs the fingerprint is
recomputed, and if the weights really changed the host refuses to serve from then on. Writes
through `tensor.data` bypass version counters: `verify` recomputes the fingerprint in any case.
"""

from __future__ import annotations

import threading

import torch
from torch import nn

from spa.errors import ConfigError
from spa.tasks.fingerprint import fingerprint
from spa.tasks.model_cache import storage_keys

_Entry = tuple[nn.Module, str, str, torch.Tensor, int]  # module, table, key, tensor, version


def _snapshot(model: nn.Module) -> tuple[list[_Entry], list[tuple[nn.Module, dict]]]:
    tensors: list[_Entry] = []
    children = []
    for module in model.modules():
        children.append((module, dict(module._modules)))
        for table in ("_parameters", "_buffers"):
            for key, tensor in getattr(module, table).items():
                if tensor is not None:
                    tensors.append((module, table, key, tensor, tensor._version))
    return tensors, children


def _unchanged(tensors: list[_Entry], children: list[tuple[nn.Module, dict]]) -> bool:
    for module, table, key, tensor, version in tensors:
        if getattr(module, table).get(key) is not tensor or tensor._version != version:
            return False
    return all(module._modules == kept for module, kept in children)


class BaseGuard:
    """Fingerprint and change detection of a base model; safe to share between threads.

    Args:
        model: the plain base model.

    Attributes:
        fingerprint: the base's fingerprint when the guard was made.
        storages: storage keys of the base's tensors (`spa.tasks.model_cache.storage_keys`).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.fingerprint = fingerprint(model)
        self._tensors, self._children = _snapshot(model)
        self.storages = storage_keys(entry[3] for entry in self._tensors)
        self._lock = threading.Lock()
        self._changed: str | None = None

    def check(self) -> None:
        """Raise if the base changed since the guard was made (cheap unless something changed).

        Raises:
            ConfigError: naming both fingerprints, once the weights changed.
        """
        if self._changed is None and _unchanged(self._tensors, self._children):
            return
        self.verify()

    def verify(self) -> None:
        """Recompute the fingerprint and raise if it differs (catches every kind of write).

        Raises:
            ConfigError: naming both fingerprints.
        """
        with self._lock:
            if self._changed is None:
                now = fingerprint(self.model)
                if now == self.fingerprint:  # written, but with the same values: still valid
                    self._tensors, self._children = _snapshot(self.model)
                    self.storages = storage_keys(entry[3] for entry in self._tensors)
                    return
                self._changed = (
                    f"TaskHost: the base model changed after the host was created (fingerprint "
                    f"{self.fingerprint} is now {now}); its tasks were validated against the old "
                    "weights: restore them or create a new TaskHost"
                )
            raise ConfigError(self._changed)
