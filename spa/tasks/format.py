"""The task-bundle file: safetensors tensors plus one JSON metadata string, written atomically.

A bundle is a standard safetensors file (no pickle, so loading never executes code from the
file). Its header metadata holds a single key, `spa_bundle`, whose value is a canonical JSON
document (sorted keys, compact separators) describing the task; the document carries a
`checksum` over itself and every stored tensor, so a truncated or altered file is refused.
Channel and block masks are bit-packed (1 bit per entry) into one `uint8` tensor named `masks`;
`metadata["masks"]` lists `[key, length]` pairs in packing order (sorted by key), each mask
starting on a byte.
On disk, all tensors of one dtype are concatenated into a single safetensors entry named after
the dtype (`float32`, `uint8`, ...); `metadata["tensor_layout"]` lists `[name, dtype, shape]` in
order (sorted by name, so the layout cannot be reordered without the file being refused), so
the header stays small. An optional Ed25519 signature (`spa.tasks.signing`) lives next to the
document under the header key `spa_signature`; it signs the canonical document, which carries the
checksum over every tensor byte, so it covers the header and all tensors.

Reading is strict: duplicate JSON keys (in the safetensors header or the document), unknown header
keys, an unsorted or overlapping tensor layout, mask records that do not tile the packed masks
exactly, and non-finite stored values are refused before any tensor is used.

This module (with `spa.tasks.export`) is the only place that imports `safetensors`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from spa._files import write_atomic as write_atomic  # re-exported: the one atomic writer
from spa.codec.protocols import STORAGE_DTYPES as STORAGE_DTYPES  # re-exported
from spa.errors import BundleError
from spa.tasks.bitmasks import check_mask_records, is_count, unpack_mask
from spa.tasks.bitmasks import pack_mask as pack_mask  # re-exported: the format's mask codec
from spa.tasks.bitmasks import pack_masks as pack_masks
from spa.tasks.limits import check_entries, check_header_size, check_json_text
from spa.tasks.limits import strict_json as strict_json  # re-exported: the format's JSON reader

FORMAT_NAME = "spa-task-bundle"
FORMAT_VERSION = 2
METADATA_KEY = "spa_bundle"
SIGNATURE_KEY = "spa_signature"
MASKS_TENSOR = "masks"
LAYOUT_KEY = "tensor_layout"


@dataclass
class Bundle:
    """A task bundle read from (or about to be written to) disk.

    Attributes:
        metadata: the parsed JSON metadata document.
        tensors: stored tensors by name (bit-packed masks are unpacked on demand with `mask`).
        path: the file it was read from, if any.
        size_bytes: bytes on disk (0 before writing).
        signature: the signature record (`algorithm`, `key_id`, `signature`, `task`) if the file is
            signed; checked against trusted keys by `spa.tasks.signing.verify_bundle`.
        used: names of tensors and masks consumed by the last `plan_task` (each must be used).
    """

    metadata: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    path: Path | None = None
    size_bytes: int = 0
    signature: dict[str, str] | None = None
    used: set[str] = field(default_factory=set, repr=False, compare=False)

    def mask(self, key: str) -> torch.Tensor:
        """Unpack the boolean mask stored under `key` (and mark it used).

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
                self.used.add(f"mask:{key}")
                return unpack_mask(packed[offset : offset + size], length)
            offset += size
        raise BundleError(f"{self.path or 'bundle'}: mask {key!r} is missing; the file is damaged")


def _pack(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[list]]:
    """Concatenate tensors into one flat tensor per dtype; the layout lists name, dtype, shape.

    One safetensors entry per dtype keeps the file header small (a bundle has hundreds of small
    tensors, and per-entry header text would rival the values themselves).
    """
    groups: dict[str, list[torch.Tensor]] = {}
    layout = []
    for name, tensor in sorted(tensors.items()):
        dtype = str(tensor.dtype).removeprefix("torch.")
        layout.append([name, dtype, list(tensor.shape)])
        groups.setdefault(dtype, []).append(tensor.reshape(-1))
    return {dtype: torch.cat(parts) for dtype, parts in groups.items()}, layout


def _check_layout_record(record: Any, previous: str | None) -> tuple[str, str, list[int]]:
    if not (isinstance(record, list) and len(record) == 3):
        raise ValueError(f"record {record!r} is not [name, dtype, shape]")
    name, dtype, shape = record
    if not (isinstance(name, str) and name and isinstance(dtype, str)):
        raise ValueError(f"record {record!r} has no string name and dtype")
    if not (isinstance(shape, list) and len(shape) <= 8 and all(map(is_count, shape))):
        raise ValueError(f"tensor {name!r} has a bad shape {shape!r}")
    if previous is not None and name <= previous:
        raise ValueError(f"tensor {name!r} is out of order or repeated (layouts are sorted)")
    return name, dtype, shape


def _unpack(flat: dict[str, torch.Tensor], layout: Any, source: str) -> dict[str, torch.Tensor]:
    """Inverse of `_pack`, checking that the sorted layout covers every stored value exactly."""
    offsets = dict.fromkeys(flat, 0)
    tensors: dict[str, torch.Tensor] = {}
    try:
        if not isinstance(layout, list):
            raise ValueError(f"layout is a {type(layout).__name__}, not a list")
        for dtype, buffer in flat.items():
            if str(buffer.dtype) != f"torch.{dtype}" or buffer.dim() != 1:
                raise ValueError(f"stored entry {dtype!r} is not a flat {dtype} tensor")
        previous = None
        for record in layout:
            name, dtype, shape = _check_layout_record(record, previous)
            previous = name
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
    for buffer in flat.values():  # one pass per stored dtype, not per tensor
        if buffer.is_floating_point() and not bool(torch.isfinite(buffer).all()):
            bad = [
                n for n, t in tensors.items() if t.dtype == buffer.dtype and not t.isfinite().all()
            ]
            raise BundleError(f"{source}: tensor(s) {bad[:3]} hold non-finite values (NaN or inf)")
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
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # no bytes copy
    return "sha256:" + digest.hexdigest()


def task_name_of(path: str | os.PathLike) -> str:
    """The task name a bundle file stands for: its file name without `.safetensors`."""
    return Path(path).name.removesuffix(".safetensors")


def signed_message(document: dict[str, Any], task: str | None = None) -> bytes:
    """The bytes a bundle signature signs: a domain tag, the task name and the document.

    The document carries the base fingerprint and the checksum over itself and every tensor's
    name, dtype, shape and bytes (verified on read), so a signature binds the task name, the
    base and all tensor data. `task=None` gives the message of version-1 signatures (spa 0.1),
    which named no task; they are still checked, and refused where a task name is expected.
    """
    if task is None:
        return b"spa-task-bundle-signature-v1\0" + canonical_json(document).encode()
    bound = {"task": task, "base_fingerprint": document.get("base_fingerprint")}
    return (
        b"spa-task-bundle-signature-v2\0" + canonical_json({**bound, "document": document}).encode()
    )


def write_bundle(
    path: str | os.PathLike,
    bundle: Bundle,
    sign: Callable[[bytes], dict[str, str]] | None = None,
    task: str | None = None,
) -> int:
    """Write `bundle` to `path` atomically; return the bytes written.

    The bytes go to a temporary file in the target directory, are flushed to disk, and only then
    renamed over `path` (`os.replace`), so a crash leaves either the old file or no file.

    Args:
        path: destination file.
        bundle: metadata and tensors; its metadata, path, size and signature are updated.
        sign: optional signer mapping `signed_message(document, task)` to a signature record
            (see `spa.tasks.signing.signer`); None writes an unsigned file.
        task: the task name the signature binds (default: `task_name_of(path)`).
    """
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in bundle.tensors.items()}
    document = dict(bundle.metadata)
    flat, document[LAYOUT_KEY] = _pack(tensors)
    document["checksum"] = checksum(document, tensors)
    header = {METADATA_KEY: canonical_json(document)}
    task = task_name_of(path) if task is None else task
    signature = None if sign is None else {**sign(signed_message(document, task)), "task": task}
    if signature is not None:
        header[SIGNATURE_KEY] = canonical_json(signature)
    # Written straight to the temporary file: no second copy of the values as bytes.
    write_atomic(path, lambda temporary: safetensors.torch.save_file(flat, temporary, header))
    size = Path(path).stat().st_size
    # What a reader will see (JSON types: tuples become lists), so the bundle plans as read.
    bundle.metadata, bundle.signature = json.loads(header[METADATA_KEY]), signature
    bundle.path, bundle.size_bytes = Path(path), size
    return size


def _header(data: bytes, source: str) -> dict[str, Any]:
    """The safetensors header metadata of a file's bytes, bounded before parsing."""
    if len(data) < 8:
        raise BundleError(f"{source}: file is truncated ({len(data)} bytes); re-export the bundle")
    (header_size,) = struct.unpack("<Q", data[:8])
    if data[8:9] != b"{":  # a safetensors header is a JSON object: this is another kind of file
        raise BundleError(
            f"{source}: not a spa bundle (not a safetensors file); bundles are written by "
            "spa.save_task"
        )
    check_header_size(header_size, source)
    if header_size > len(data) - 8:
        raise BundleError(
            f"{source}: file is truncated (header says {header_size} bytes, file has "
            f"{len(data) - 8}); re-export or re-download the bundle"
        )
    text = data[8 : 8 + header_size]
    check_json_text(text, source, "the safetensors header")
    try:
        header = strict_json(text)
    except ValueError as error:
        raise BundleError(f"{source}: damaged safetensors header ({error})") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def read_metadata(
    data: bytes, source: str, key: str = METADATA_KEY, format_name: str = FORMAT_NAME
) -> dict[str, Any]:
    """Parse the spa metadata document from a safetensors file's bytes (without the tensors).

    The header's size, nesting and number of values are checked (`spa.tasks.limits`) before
    it is parsed, so a hostile header costs little to refuse.

    Args:
        data: the whole file, or at least its first 8 bytes and its header.
        source: the file's path, for error messages.
        key: the header metadata key holding the JSON document.
        format_name: the expected `format` field of the document.

    Raises:
        BundleError: if the header is truncated, too large, too deeply nested, not JSON, or
            holds no spa metadata.
    """
    text = _header(data, source).get(key)
    if not isinstance(text, str):
        raise BundleError(
            f"{source}: not a {format_name} file (no '{key}' metadata); bundles are written by "
            "spa.save_task"
        )
    check_json_text(text, source, "the metadata document")
    try:
        document = strict_json(text)
    except ValueError as error:
        raise BundleError(
            f"{source}: not a {format_name} file (unreadable '{key}' metadata: {error})"
        ) from None
    if not isinstance(document, dict) or document.get("format") != format_name:
        found = document.get("format") if isinstance(document, dict) else None
        raise BundleError(f"{source}: not a {format_name} file (format {found!r})")
    check_entries(document, source)
    return document


def _described(data: bytes, source: str) -> Bundle:
    """The bundle's metadata and signature, checked and parsed; no tensor read yet."""
    document = read_metadata(data, source)
    header_metadata = _header(data, source)
    unknown = sorted(set(header_metadata) - {METADATA_KEY, SIGNATURE_KEY})
    if unknown:
        raise BundleError(f"{source}: unknown header metadata key(s) {unknown}; damaged file")
    version = document.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{source}: unknown bundle format version {version!r}; this spa reads version "
            f"{FORMAT_VERSION}; upgrade spa or re-save the task with this version"
        )
    signature = _signature_record(header_metadata.get(SIGNATURE_KEY), source)
    return Bundle(metadata=document, tensors={}, path=Path(source), signature=signature)


def parse_bundle(
    data: bytes, source: str, check: Callable[[Bundle], object] | None = None
) -> Bundle:
    """Validate and parse bundle bytes read from `source` (a path, for error messages).

    Args:
        data: the whole file.
        source: the file's path, for error messages.
        check: called with the bundle's description (metadata and signature, no tensors)
            before any tensor is parsed, e.g. a signature check by trusted keys; it raises to
            refuse the file.

    Raises:
        BundleError: for a truncated or altered file, a file that is not a bundle, an unknown
            format version, or a header over the limits of `spa.tasks.limits`.
    """
    bundle = _described(data, source)
    if check is not None:
        check(bundle)
    try:
        flat = safetensors.torch.load(data)
    except Exception as error:  # safetensors raises its own SafetensorError type
        raise BundleError(
            f"{source}: damaged bundle, its tensors cannot be read ({error}); re-export it"
        ) from None
    document = bundle.metadata
    tensors = _unpack(flat, document.get(LAYOUT_KEY), source)
    expected = checksum(document, tensors)
    if document.get("checksum") != expected:
        raise BundleError(
            f"{source}: checksum mismatch (stored {document.get('checksum')}, computed "
            f"{expected}); the file was altered or damaged, re-export it"
        )
    check_mask_records(document.get("masks", []), tensors.get(MASKS_TENSOR), source)
    bundle.tensors, bundle.size_bytes = tensors, len(data)
    return bundle


def _signature_record(text: Any, source: str) -> dict[str, str] | None:
    if text is None:
        return None
    try:
        record = strict_json(text)
    except (ValueError, TypeError):
        record = None
    if not (
        isinstance(record, dict)
        and set(record) - {"task"} == {"algorithm", "key_id", "signature"}
        and all(isinstance(value, str) for value in record.values())
    ):
        raise BundleError(f"{source}: malformed signature record; re-sign the bundle")
    return record


def read_bundle(path: str | os.PathLike, check: Callable[[Bundle], object] | None = None) -> Bundle:
    """Read and validate the bundle at `path`; no code from the file is ever executed.

    The header is read and checked first (size, nesting, entries; then `check`, e.g. the
    signature by trusted keys), so a hostile or untrusted file is refused before its body is
    read or parsed.

    Args:
        path: a `.safetensors` file written by `spa.save_task`.
        check: called with the bundle's description (metadata and signature, no tensors)
            before any tensor is read; raises to refuse the file.

    Returns:
        The parsed `Bundle`.

    Raises:
        BundleError: if the file is missing, truncated, altered, not a bundle, over the limits
            of `spa.tasks.limits`, or of an unknown format version; the message names the path.
    """
    try:
        with open(path, "rb") as file:
            head = file.read(9)  # the header size, and the "{" every safetensors header opens
            if len(head) == 9 and head[8:9] == b"{":
                check_header_size(struct.unpack("<Q", head[:8])[0], str(path))
                head += file.read(struct.unpack("<Q", head[:8])[0] - 1)
            description = _described(head, str(path))
            if check is not None:
                check(description)
            data = head + file.read()
    except OSError as error:
        raise BundleError(f"{path}: cannot read bundle ({error.strerror})") from None
    return parse_bundle(data, str(path), check)
