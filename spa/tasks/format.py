"""The task-bundle file: safetensors tensors plus one JSON metadata string, written atomically.

A bundle is a standard safetensors file (no pickle, so loading never executes code from the
file). Its header metadata holds a single key, `spa_bundle`, whose value is a canonical JSON
document (sorted keys, compact separators) describing the task; the document carries a
`checksum` over itself and every stored tensor, so a truncated or altered file is refused.
Channel and block masks are bit-packed (1 bit per entry) into one `uint8` tensor named `masks`;
`metadata["masks"]` lists `[key, length]` pairs in packing order, each mask starting on a byte.
On disk, all tensors of one dtype are concatenated into a single safetensors entry named after
the dtype (`float32`, `uint8`, ...); `metadata["tensor_layout"]` lists `[name, dtype, shape]` in
order, so the header stays small.

This module (with `spa.tasks.export`) is the only place that imports `safetensors`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from spa.errors import BundleError

FORMAT_NAME = "spa-task-bundle"
FORMAT_VERSION = 1
METADATA_KEY = "spa_bundle"
MASKS_TENSOR = "masks"
LAYOUT_KEY = "tensor_layout"

# Storage dtypes a bundle may use for floating-point tensors.
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Bundle:
    """A task bundle read from (or about to be written to) disk.

    Attributes:
        metadata: the parsed JSON metadata document.
        tensors: stored tensors by name (bit-packed masks are unpacked on demand with `mask`).
        path: the file it was read from, if any.
        size_bytes: bytes on disk (0 before writing).
    """

    metadata: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    path: Path | None = None
    size_bytes: int = 0

    def mask(self, key: str) -> torch.Tensor:
        """Unpack the boolean mask stored under `key`.

        Raises:
            BundleError: if the bundle holds no such mask.
        """
        offset = 0
        packed = self.tensors.get(MASKS_TENSOR)
        for name, length in self.metadata.get("masks", []):
            size = (length + 7) // 8
            if name == key:
                if packed is None or offset + size > packed.numel():
                    break
                return unpack_mask(packed[offset : offset + size], length)
            offset += size
        raise BundleError(f"{self.path or 'bundle'}: mask {key!r} is missing; the file is damaged")


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
    packed = [pack_mask(mask) for mask in masks.values()]
    layout = [[key, int(mask.numel())] for key, mask in masks.items()]
    return torch.cat(packed), layout


def _pack(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[list]]:
    """Concatenate tensors into one flat tensor per dtype; the layout lists name, dtype, shape.

    One safetensors entry per dtype keeps the file header small (a bundle has hundreds of small
    tensors, and per-entry header text would rival the values themselves).
    """
    groups: dict[str, list[torch.Tensor]] = {}
    layout = []
    for name, tensor in tensors.items():
        dtype = str(tensor.dtype).removeprefix("torch.")
        layout.append([name, dtype, list(tensor.shape)])
        groups.setdefault(dtype, []).append(tensor.reshape(-1))
    return {dtype: torch.cat(parts) for dtype, parts in groups.items()}, layout


def _unpack(flat: dict[str, torch.Tensor], layout: Any, source: str) -> dict[str, torch.Tensor]:
    """Inverse of `_pack`, checking that the layout covers every stored value exactly."""
    offsets = dict.fromkeys(flat, 0)
    tensors = {}
    try:
        for name, dtype, shape in layout:
            size = math.prod(shape)
            buffer = flat[dtype]
            if offsets[dtype] + size > buffer.numel() or str(buffer.dtype) != f"torch.{dtype}":
                raise ValueError(f"tensor {name!r} lies outside the stored values")
            tensors[name] = buffer[offsets[dtype] : offsets[dtype] + size].reshape(shape)
            offsets[dtype] += size
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise BundleError(f"{source}: damaged bundle, bad tensor layout ({error})") from None
    if any(offsets[dtype] != buffer.numel() for dtype, buffer in flat.items()):
        raise BundleError(f"{source}: damaged bundle, stored values not covered by the layout")
    return tensors


def canonical_json(document: dict[str, Any]) -> str:
    """The JSON text spa writes and hashes: sorted keys, compact separators."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)


def checksum(document: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the metadata document (without its checksum) and every tensor's bytes."""
    digest = hashlib.sha256()
    body = {key: value for key, value in document.items() if key != "checksum"}
    digest.update(canonical_json(body).encode())
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"\0{name}\0{tensor.dtype}\0{list(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def write_bundle(path: str | os.PathLike, bundle: Bundle) -> int:
    """Write `bundle` to `path` atomically; return the bytes written.

    The bytes go to a temporary file in the target directory, are flushed to disk, and only then
    renamed over `path` (`os.replace`), so a crash leaves either the old file or no file.
    """
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in bundle.tensors.items()}
    document = dict(bundle.metadata)
    flat, document[LAYOUT_KEY] = _pack(tensors)
    document["checksum"] = checksum(document, tensors)
    data = safetensors.torch.save(flat, metadata={METADATA_KEY: canonical_json(document)})
    write_atomic(path, data)
    bundle.metadata = document
    bundle.path, bundle.size_bytes = Path(path), len(data)
    return len(data)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and `os.replace`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, target)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def read_metadata(
    data: bytes, source: str, key: str = METADATA_KEY, format_name: str = FORMAT_NAME
) -> dict[str, Any]:
    """Parse the spa metadata document from a safetensors file's bytes (without the tensors).

    Args:
        data: the whole file.
        source: the file's path, for error messages.
        key: the header metadata key holding the JSON document.
        format_name: the expected `format` field of the document.

    Raises:
        BundleError: if the header is truncated, not JSON, or holds no spa metadata.
    """
    if len(data) < 8:
        raise BundleError(f"{source}: file is truncated ({len(data)} bytes); re-export the bundle")
    (header_size,) = struct.unpack("<Q", data[:8])
    if data[8:9] != b"{":  # a safetensors header is a JSON object: this is another kind of file
        raise BundleError(
            f"{source}: not a spa bundle (not a safetensors file); bundles are written by "
            "spa.save_task"
        )
    if header_size > len(data) - 8:
        raise BundleError(
            f"{source}: file is truncated (header says {header_size} bytes, file has "
            f"{len(data) - 8}); re-export or re-download the bundle"
        )
    try:
        header = json.loads(data[8 : 8 + header_size])
        document = json.loads(header["__metadata__"][key])
    except (ValueError, KeyError, TypeError) as error:
        raise BundleError(
            f"{source}: not a {format_name} file (no readable '{key}' metadata: {error!r}); "
            "bundles are written by spa.save_task"
        ) from None
    if not isinstance(document, dict) or document.get("format") != format_name:
        found = document.get("format") if isinstance(document, dict) else None
        raise BundleError(f"{source}: not a {format_name} file (format {found!r})")
    return document


def parse_bundle(data: bytes, source: str) -> Bundle:
    """Validate and parse bundle bytes read from `source` (a path, for error messages).

    Raises:
        BundleError: for a truncated or altered file, a file that is not a bundle, or an unknown
            format version.
    """
    document = read_metadata(data, source)
    version = document.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{source}: unknown bundle format version {version!r}; this spa reads version "
            f"{FORMAT_VERSION}; upgrade spa or re-save the task with this version"
        )
    try:
        flat = safetensors.torch.load(data)
    except Exception as error:  # safetensors raises its own SafetensorError type
        raise BundleError(
            f"{source}: damaged bundle, its tensors cannot be read ({error}); re-export it"
        ) from None
    tensors = _unpack(flat, document.get(LAYOUT_KEY), source)
    expected = checksum(document, tensors)
    if document.get("checksum") != expected:
        raise BundleError(
            f"{source}: checksum mismatch (stored {document.get('checksum')}, computed "
            f"{expected}); the file was altered or damaged, re-export it"
        )
    return Bundle(metadata=document, tensors=tensors, path=Path(source), size_bytes=len(data))


def read_bundle(path: str | os.PathLike) -> Bundle:
    """Read and validate the bundle at `path`; no code from the file is ever executed.

    Args:
        path: a `.safetensors` file written by `spa.save_task`.

    Returns:
        The parsed `Bundle`.

    Raises:
        BundleError: if the file is missing, truncated, altered, not a bundle, or of an unknown
            format version; the message names the path.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise BundleError(f"{path}: cannot read bundle ({error.strerror})") from None
    return parse_bundle(data, str(path))
