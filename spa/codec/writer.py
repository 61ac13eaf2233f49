"""`BundleWriter`: the typed collector that a bundle's codecs write tensors, masks and shared
records into while `spa.save_task` assembles a bundle (one writer per bundle, not shared)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from spa.codec.protocols import Entry


@dataclass
class BundleWriter:
    """Tensors (cast to the storage dtype), masks and shared records of one bundle.

    Attributes:
        dtype: storage dtype of floating-point tensors.
        tensors: stored tensors by name.
        masks: boolean masks by key (bit-packed when the bundle is written).
        sections: shared records by metadata section (e.g. SPLoPA's "banks"), in order.
    """

    dtype: torch.dtype
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    sections: dict[str, list[Entry]] = field(default_factory=dict)
    _keys: dict[tuple[str, int], str] = field(default_factory=dict, repr=False)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Store a copy of `tensor` (floating point: in the storage dtype) as `name`."""
        tensor = tensor.detach()
        if tensor.is_floating_point():
            tensor = tensor.to(self.dtype)
        self.tensors[name] = tensor.cpu().contiguous().clone()

    def add_exact(self, name: str, tensor: torch.Tensor) -> None:
        """Store `tensor` as it is (index tensors that must keep their dtype)."""
        self.tensors[name] = tensor

    def add_mask(self, key: str, mask: torch.Tensor) -> None:
        """Store the boolean mask `key`."""
        self.masks[key] = mask.detach().cpu().bool()

    def share(
        self, section: str, owner: object, prefix: str, record: Callable[[str], Entry]
    ) -> str:
        """The key of `owner` in `section`; the first call for an owner records it once.

        `record(key)` stores the owner's tensors and returns its metadata record, appended to
        `sections[section]`; the key is `prefix` plus the record's index ("bank0", ...).
        """
        found = self._keys.get((section, id(owner)))
        if found is None:
            records = self.sections.setdefault(section, [])
            found = self._keys[(section, id(owner))] = f"{prefix}{len(records)}"
            records.append(record(found))
        return found
