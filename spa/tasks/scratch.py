"""`Scratch`: reusable work buffers for building task models; `ScratchPool`: one per builder.

A `Scratch` is not thread-safe: two builds that use the same one at the same time overwrite each
other's intermediate values (issue 23: a shared buffer gave wrong, cached task models).
`ScratchPool` lends each concurrent build its own `Scratch` and takes it back afterwards, so
buffers are reused across builds but never shared by two running ones.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class Scratch:
    """Reusable work buffers of one builder: views of buffers that grow on demand.

    A buffer is only ever used inside one build, never handed to a model, so reusing it across
    builds shares nothing between task models. Not thread-safe: use one `Scratch` per thread
    (`ScratchPool.borrow`).
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    def get(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """A contiguous tensor of `shape` (contents undefined) backed by buffer `name`."""
        key = (name, dtype, device)
        numel = math.prod(shape)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < numel:
            buffer = self._buffers[key] = torch.empty(numel, dtype=dtype, device=device)
        return buffer[:numel].view(shape)

    @property
    def nbytes(self) -> int:
        """Bytes held by this scratch's buffers."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())


class ScratchPool:
    """Lends a `Scratch` to each concurrent build; safe to share between threads.

    Idle scratches are kept for reuse, at most `keep` of them (the rest are dropped when
    returned, so a burst of concurrent builds does not hold memory forever).

    Args:
        keep: idle scratches kept for later builds.
    """

    def __init__(self, keep: int = 2) -> None:
        self._idle: list[Scratch] = []
        self._lock = threading.Lock()
        self._keep = keep

    @contextmanager
    def borrow(self) -> Iterator[Scratch]:
        """A `Scratch` that no other borrower holds until this context exits."""
        with self._lock:
            scratch = self._idle.pop() if self._idle else Scratch()
        try:
            yield scratch
        finally:
            with self._lock:
                if len(self._idle) < self._keep:
                    self._idle.append(scratch)
