"""`Scratch`: reusable work buffers for building task models again and again."""

from __future__ import annotations

import math

import torch


class Scratch:
    """Reusable work buffers of a task host: views of buffers that grow on demand.

    A buffer is only ever used inside one build, never handed to a model, so reusing it across
    builds shares nothing between task models.
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
