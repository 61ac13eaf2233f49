"""What a layer codec sees of a bundle, and the codec record an adapter kind registers.

These are the only bundle types the adapter kinds' codecs (`spa.adapters.<kind>.codec`) use,
so the kinds never import `spa.tasks` (STYLE B2: `adapters` <- `tasks`): `spa.tasks.format`'s
`Bundle` satisfies `StoredBundle`, and `spa.codec.writer.BundleWriter` is what `save` fills.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

if TYPE_CHECKING:
    from spa.codec.writer import BundleWriter

# One JSON object of a bundle's metadata (a layer entry, a shared record such as a bank).
Entry = dict[str, Any]

# Storage dtypes a bundle may use for floating-point tensors.
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class StoredBundle(Protocol):
    """A bundle as read from disk: metadata, tensors, the source path and the used names."""

    metadata: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    path: Path | None
    used: set[str]

    def mask(self, key: str) -> torch.Tensor:
        """The boolean mask stored under `key` (marked used); raises `BundleError` if absent."""
        ...


class WorkBuffers(Protocol):
    """Reusable work buffers of a task host (`spa.tasks.scratch.Scratch`)."""

    def get(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """A contiguous tensor of `shape` (contents undefined) backed by buffer `name`."""
        ...


@runtime_checkable
class LayerPlan(Protocol):
    """A validated layer entry, ready to build the fused task layer.

    Attributes:
        entry: the layer's metadata entry (its "path" and optional "attributes" are read by
            the loader, which rebuilds the layer with those attributes).
    """

    entry: Entry

    def build(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fused weight and bias of the task layer (new tensors, base untouched)."""
        ...


# (dotted name, adapter layer, base layer, writer) -> (entry, retained base weights)
SaveLayer = Callable[[str, nn.Module, nn.Module, "BundleWriter"], tuple[Entry, int]]
# (bundle, entry, base layer or None) -> validated plan; raises BundleError
PlanLayer = Callable[[StoredBundle, Entry, nn.Module | None], LayerPlan]
# (validated plan, full-size adapter layer of the kind) -> None; writes the plan into the layer
RestoreLayer = Callable[[LayerPlan, nn.Module], None]


@dataclass(frozen=True)
class LayerCodec:
    """How one adapter kind's layers are written to and read from a bundle.

    Attributes:
        save: records a layer relative to its base layer into the writer; returns its entry
            and its retained weights.
        plan: validates an entry against its base layer without building anything.
        sections: metadata lists the codec fills through `BundleWriter.share` and
            `add_record` (SPLoPA's "banks"); every bundle carries each registered section,
            empty when unused.
        restore: writes a validated plan into a full-size, freshly adapted layer of the kind
            (masks from the kept indices, stored tensors scattered to the kept positions), for
            `load_task(..., trainable=True)`; None: the kind cannot be reloaded for training.
        meta_base_weights: `save` reads a frozen base weight on the `meta` device as the base
            layer's own values (`spa.compacted_for_save` puts such placeholders in its copy).
    """

    save: SaveLayer
    plan: PlanLayer
    sections: tuple[str, ...] = ()
    restore: RestoreLayer | None = None
    meta_base_weights: bool = False
