"""Bit-packed boolean masks of a task bundle: packing, unpacking and checking the records.

Masks are packed 1 bit per entry (big-endian bit order), each starting on a byte, into one
`uint8` tensor; `[key, length]` records, sorted by key, say which bytes belong to which mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from spa.errors import BundleError


def is_count(value: Any) -> bool:
    """A JSON integer >= 0 (JSON booleans are not counts)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Bit-pack a 1-D boolean mask into `ceil(len / 8)` uint8 values (big-endian bit order)."""
    bits = mask.detach().to("cpu", torch.bool).numpy()
    return torch.from_numpy(np.packbits(bits).copy())


def unpack_mask(packed: torch.Tensor, length: int) -> torch.Tensor:
    """Inverse of `pack_mask`: the first `length` bits as a boolean tensor."""
    bits = np.unpackbits(packed.numpy(), count=length)
    return torch.from_numpy(bits.astype(bool))


def pack_masks(masks: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, list[list]]:
    """Bit-pack several masks into one uint8 tensor and its `[key, length]` layout."""
    if not masks:
        return None, []
    ordered = sorted(masks.items())  # sorted: records cannot be reordered or renamed unseen
    packed = [pack_mask(mask) for _, mask in ordered]
    layout = [[key, int(mask.numel())] for key, mask in ordered]
    return torch.cat(packed), layout


def check_mask_records(records: Any, packed: torch.Tensor | None, source: str) -> None:
    """Check that `[key, length]` mask records tile the `packed` uint8 tensor exactly.

    Records must be sorted by key (so none can be renamed or reordered unseen), lengths counts,
    the packed tensor exactly as long as the records need, and its padding bits zero.

    Raises:
        BundleError: naming `source` and the offending record.
    """
    if not isinstance(records, list):
        raise BundleError(f"{source}: damaged bundle, 'masks' is not a list")
    ends: list[tuple[str, int, int]] = []
    for record in records:
        if not (
            isinstance(record, list)
            and len(record) == 2
            and isinstance(record[0], str)
            and is_count(record[1])
            and (not ends or record[0] > ends[-1][0])
        ):
            raise BundleError(
                f"{source}: damaged bundle, bad, repeated or unsorted mask record {record!r}"
            )
        ends.append((record[0], record[1], (ends[-1][2] if ends else 0) + (record[1] + 7) // 8))
    needed = ends[-1][2] if ends else 0
    if not records:
        if packed is not None:
            raise BundleError(f"{source}: damaged bundle, packed masks stored but none recorded")
        return
    if packed is None or packed.dtype != torch.uint8 or packed.dim() != 1:
        raise BundleError(f"{source}: damaged bundle, masks are recorded but not stored as uint8")
    if packed.numel() != needed:
        raise BundleError(
            f"{source}: damaged bundle, the mask records need {needed} packed bytes, the file "
            f"stores {packed.numel()}"
        )
    for name, length, end in ends:
        if length % 8 and int(packed[end - 1]) & (0xFF >> (length % 8)):
            raise BundleError(f"{source}: mask {name!r} has non-zero padding bits; damaged file")
