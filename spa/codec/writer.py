"""`BundleWriter`: the typed collector that a bundle's codecs write tensors, masks, channel
selections and shared records into while `spa.save_task` assembles a bundle (one writer per
bundle, not shared between threads). It is the write side of the codec toolkit; reading is
`spa.codec.entries`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from spa.codec.protocols import Entry
from spa.errors import ConfigError


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

    def add_selection(self, entry: Entry, side: str, indices: torch.Tensor, size: int) -> None:
        """Record which of the base layer's `size` channels layer `entry` keeps on `side`.

        As cheaply as possible: every channel in order stores nothing; sorted indices store a
        bit-packed mask over the base channels (`entry["<side>_selection"] = "mask"`); any other
        order stores int32 indices ("indices").

        Raises:
            ConfigError: for an index outside the base layer's channels.
        """
        name, indices = entry["path"], indices.detach().cpu()
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= size):
            raise ConfigError(
                f"save_task: {name}: {side}_indices reach {int(indices.max())}, outside the base "
                f"layer's {size} channels; pass the base model the task was adapted from"
            )
        if indices.numel() == size and torch.equal(indices, torch.arange(size)):
            return
        if indices.numel() < 2 or bool((indices[1:] > indices[:-1]).all()):
            mask = torch.zeros(size, dtype=torch.bool)
            mask[indices] = True
            self.add_mask(f"{name}:{side}_kept", mask)
            entry[f"{side}_selection"] = "mask"
            return
        self.add(f"layers.{name}.{side}_indices", indices.to(torch.int32))
        entry[f"{side}_selection"] = "indices"

    def add_selections(
        self, entry: Entry, out_indices: torch.Tensor, in_indices: torch.Tensor, sizes: tuple
    ) -> None:
        """`add_selection` of both sides: kept base output and input channels of `sizes`."""
        self.add_selection(entry, "out", out_indices, sizes[0])
        self.add_selection(entry, "in", in_indices, sizes[1])

    def share(self, section: str, owner: object, prefix: str) -> tuple[str, bool]:
        """The key of `owner` in `section`, and True on the owner's first call.

        After a first call, the caller stores the owner's tensors and appends its record with
        `add_record`; the key is `prefix` plus the record's index ("bank0", ...).
        """
        found = self._keys.get((section, id(owner)))
        if found is not None:
            return found, False
        index = sum(key[0] == section for key in self._keys)
        self._keys[(section, id(owner))] = key = f"{prefix}{index}"
        return key, True

    def add_record(self, section: str, record: Entry) -> None:
        """Append a shared record (e.g. a SPLoPA prototype bank) to metadata list `section`."""
        self.sections.setdefault(section, []).append(record)
