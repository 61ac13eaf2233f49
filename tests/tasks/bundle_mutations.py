"""Seeded bundle mutations for the fuzz test and `benchmarks/fuzz_bundles.py`.

Two families: file-level corruption (truncation, bit flips, insertions, deletions, header-length
edits; the checksum is NOT recomputed) and hostile edits of the metadata or layout made the way
an attacker would, with the in-file checksum recomputed so only structural validation can refuse
them. Each mutation returns the new file bytes, or None when it does not apply to the bundle.
`tests/tasks/bundle_fuzz.py` applies them and classifies the outcomes.
"""

from __future__ import annotations

import copy
import json
import random
import struct
from collections.abc import Callable
from typing import Any

import safetensors.torch
import torch
from torch import nn

from spa.tasks.format import (
    LAYOUT_KEY,
    METADATA_KEY,
    _unpack,
    canonical_json,
    checksum,
)

Mutation = Callable[[random.Random, bytes, nn.Module], bytes | None]
_ODD_VALUES = [0, -1, 1.5, "4", True, False, None, [], {}, 10**12, "x"]


def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    """The safetensors header (parsed) and the tensor bytes after it."""
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]), data[8 + size :]


def join_text(header_text: str, body: bytes) -> bytes:
    """A safetensors file from header JSON text (padded to 8 bytes) and tensor bytes."""
    raw = header_text.encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def reseal(header: dict[str, Any], document: dict[str, Any], body: bytes) -> bytes:
    """Write `document` into the header with its checksum recomputed, as an attacker would."""
    header = copy.deepcopy(header)
    header["__metadata__"][METADATA_KEY] = canonical_json(document)
    data = join_text(json.dumps(header), body)
    try:
        flat = safetensors.torch.load(data)
        tensors = _unpack(flat, document.get(LAYOUT_KEY), "fuzz")
        document = {**document, "checksum": checksum(document, tensors)}
    except Exception:  # an unreadable layout cannot be resealed: leave the old checksum
        return data
    header["__metadata__"][METADATA_KEY] = canonical_json(document)
    return join_text(json.dumps(header), body)


def _document(data: bytes) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    header, body = split(data)
    return header, json.loads(header["__metadata__"][METADATA_KEY]), body


def _metadata_edit(edit: Callable[[random.Random, dict[str, Any], nn.Module], bool]) -> Mutation:
    """A mutation that edits the document and reseals it; `edit` returns False if not applicable."""

    def mutate(rng: random.Random, data: bytes, base: nn.Module) -> bytes | None:
        header, document, body = _document(data)
        if not edit(rng, document, base):
            return None
        return reseal(header, document, body)

    return mutate


# ---- file-level corruption (checksum not recomputed) ----


def truncate(rng: random.Random, data: bytes, base: nn.Module) -> bytes:
    return data[: rng.randrange(len(data))]


def flip_bits(rng: random.Random, data: bytes, base: nn.Module) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        position = rng.randrange(len(out))
        out[position] ^= 1 << rng.randrange(8)
    return bytes(out)


def insert_bytes(rng: random.Random, data: bytes, base: nn.Module) -> bytes:
    position = rng.randrange(len(data) + 1)
    return data[:position] + rng.randbytes(rng.randint(1, 16)) + data[position:]


def delete_bytes(rng: random.Random, data: bytes, base: nn.Module) -> bytes:
    start = rng.randrange(len(data))
    return data[:start] + data[start + rng.randint(1, 16) :]


def header_length(rng: random.Random, data: bytes, base: nn.Module) -> bytes:
    (size,) = struct.unpack("<Q", data[:8])
    new = rng.choice([size + rng.randint(-16, 16), 0, 2**64 - 1, len(data), size * 2])
    return struct.pack("<Q", max(0, min(new, 2**64 - 1))) + data[8:]


# ---- hostile metadata / layout edits (checksum recomputed) ----


def _layers(document: dict[str, Any], kind: str | None = None) -> list[dict[str, Any]]:
    layers = document.get("layers", [])
    return [e for e in layers if kind is None or e.get("kind", "splora") == kind]


def _swap_layout_names(rng: random.Random, document: dict[str, Any], base: nn.Module) -> bool:
    layout = document[LAYOUT_KEY]
    same = [
        (i, j)
        for i in range(len(layout))
        for j in range(i + 1, len(layout))
        if layout[i][1:] == layout[j][1:]
    ]
    pairs = same if same and rng.random() < 0.8 else [(0, len(layout) - 1)]
    i, j = rng.choice(pairs)
    layout[i][0], layout[j][0] = layout[j][0], layout[i][0]
    return i != j


def _layout_dtype(rng: random.Random, document: dict[str, Any], base: nn.Module) -> bool:
    record = rng.choice(document[LAYOUT_KEY])
    record[1] = rng.choice(["float16", "int64", "float32", "bfloat16", "uint8", "int32", "bool"])
    return True


def _layout_shape(rng: random.Random, document: dict[str, Any], base: nn.Module) -> bool:
    record = rng.choice(document[LAYOUT_KEY])
    shape = record[2]
    choice = rng.randrange(4)
    if choice == 0 and shape:
        shape[rng.randrange(len(shape))] += rng.choice([-1, 1])
    elif choice == 1 and len(shape) >= 2:
        shape.reverse()
    elif choice == 2 and shape:
        record[2] = [1, *shape]
    else:
        numel = 1
        for size in shape:
            numel *= size
        record[2] = [numel]
    return True


def _rank(rng: random.Random, document: dict[str, Any], base: nn.Module) -> bool:
    layers = _layers(document, "splora")
    if not layers:
        return False
    entry = rng.choice(layers)
    entry["rank"] = rng.choice([0, -1, "4", 1.5, True, None, entry["rank"] + 1, 10**9])
    return True


def _drop_entry(key: str) -> Callable[[random.Random, dict[str, Any], nn.Module], bool]:
    def edit(rng: random.Random, document: dict[str, Any], base: nn.Module) -> bool:
        entries = document.get(key, [])
        if not entries:
            return False
        entries.pop(rng.randrange(len(entries)))
        return True

    return edit


def _entries(document: dict[str, Any]) -> list[dict[str, Any]]:
    return document.get("layers", []) + document.get("modules", []) + document.get("banks", [])


def _drop_field(rng: random.Random, document: dict[str, Any], base: nn.Module) -> bool:
    records = [document, *_entries(document)]
    record = rng.choice(records)
    record.pop(rng.choice(sorted(record)))
    return True


def _odd_value(rng: random.Random, document: dict[str, Any], base: nn.Module) -> bool:
    record = rng.choice([document, *_entries(document)])
    key = rng.choice(sorted(record))
    if key == "checksum":
        return False
    record[key] = rng.choice(_ODD_VALUES)
    return True


def _change_path(rng: random.Random, document: dict[str, Any], base: nn.Module) -> bool:
    entries = document.get("layers", []) + document.get("modules", [])
    if not entries:
        return False
    names = [name for name, _ in base.named_modules()] + ["nope", "conv1.weight", ""]
    rng.choice(entries)["path"] = rng.choice(names)
    return True


def _swap_paths(rng: random.Random, document: dict[str, Any], base: nn.Module) -> bool:
    entries = document.get("layers", []) + document.get("modules", [])
    if len(entries) < 2:
        return False
    a, b = rng.sample(entries, 2)
    a["path"], b["path"] = b["path"], a["path"]
    return True


def _tensor_record(rng: random.Random, document: dict[str, Any], base: nn.Module) -> bool:
    records = [m["tensors"] for m in document.get("modules", []) if m.get("tensors")]
    if not records:
        return False
    tensors = rng.choice(records)
    key = rng.choice(sorted(tensors))
    if rng.random() < 0.7:
        tensors[key][1] = rng.choice(["int64", "float16", "float64", "bool", "bfloat16", "nope"])
    else:
        tensors[key][0] = {"parameter": "buffer"}.get(tensors[key][0], "parameter")
    return True


def _narrowed_record(rng: random.Random, document: dict[str, Any], base: nn.Module) -> bool:
    """Point a narrowed base tensor at another axis or kind, or record it also as a tensor."""
    records = [m for m in document.get("modules", []) if m.get("narrowed")]
    if not records:
        return False
    entry = rng.choice(records)
    key = rng.choice(sorted(entry["narrowed"]))
    choice = rng.randrange(3)
    if choice == 0:
        entry["narrowed"][key][1] = rng.choice([0, 2, -1, "1", None])
    elif choice == 1:
        entry["narrowed"][key][0] = "buffer"
    else:
        entry.setdefault("tensors", {})[key] = ["parameter", "float32"]
    return True


def _flag(rng: random.Random, document: dict[str, Any], base: nn.Module) -> bool:
    keys = ("weight", "out_mask", "in_mask", "block_mask", "folded_norm", "bias")
    keys += ("out_selection", "in_selection")
    entries = [e for e in _entries(document) if "path" in e]
    if not entries:
        return False
    entry, key = rng.choice(entries), rng.choice(keys)
    if key == "bias":
        entry[key] = rng.choice(["base", "stored", "none"])
    elif key.endswith("selection"):
        entry[key] = rng.choice(["all", "mask", "indices"])
    else:
        entry[key] = not entry.get(key, False)
    return True


def _attribute(rng: random.Random, document: dict[str, Any], base: nn.Module) -> bool:
    entries = [e for e in _entries(document) if "path" in e]
    if not entries:
        return False
    entry = rng.choice(entries)
    attributes = entry.setdefault("attributes", {})
    key = rng.choice(
        sorted(attributes)
        or ["num_features", "out_features", "in_channels", "stride", "eps", "padding_mode"]
    )
    value = attributes.get(key, 4)
    if isinstance(value, int) and not isinstance(value, bool):
        attributes[key] = value + rng.choice([-1, 1, -value, 7])
    else:
        attributes[key] = rng.choice([[2, 2], 0.5, "circular", 3, None])
    return True


def _masks_record(rng: random.Random, document: dict[str, Any], base: nn.Module) -> bool:
    records = document.get("masks", [])
    if not records:
        return False
    choice = rng.randrange(3)
    if choice == 0 and len(records) >= 2:
        same = [
            (i, j)
            for i in range(len(records))
            for j in range(i + 1, len(records))
            if records[i][1] == records[j][1]
        ]
        i, j = rng.choice(same or [(0, 1)])
        records[i][0], records[j][0] = records[j][0], records[i][0]
    elif choice == 1:
        record = rng.choice(records)
        record[1] = max(0, record[1] + rng.choice([-9, -1, 1, 8]))
    else:
        records.append(list(rng.choice(records)))
    return True


def _bank(rng: random.Random, document: dict[str, Any], base: nn.Module) -> bool:
    banks = document.get("banks", [])
    if not banks:
        return False
    bank = rng.choice(banks)
    key = rng.choice(["block_shape", "num_prototypes", "prototype_rank", "key"])
    bank[key] = rng.choice([[2, 2], [1, 4], 0, 1, 3, "bank9", bank[key]])
    return True


def _adapter(rng: random.Random, document: dict[str, Any], base: nn.Module) -> bool:
    adapter = document.get("adapter")
    if not adapter:
        return False
    choice = rng.randrange(3)
    if choice == 0:
        adapter["head"] = rng.choice([[], ["nope"], [n for n, _ in base.named_modules()][-1:]])
    elif choice == 1:
        adapter["config"]["trainable"] = rng.choice([[], ["all"], ["norm"], ["head"], "norm"])
    else:
        document["adapter"] = rng.choice([None, "SPLoRAConfig", {}])
    return True


def duplicate_document_key(rng: random.Random, data: bytes, base: nn.Module) -> bytes:
    """Repeat a top-level key in the JSON text; the last value wins in plain json, so the
    checksum still matches (it is computed over the parsed document)."""
    header, document, body = _document(data)
    key = rng.choice(sorted(k for k in document if k != "checksum"))
    decoy = dict(document)
    decoy[key] = rng.choice(_ODD_VALUES)
    text = canonical_json(document)
    text = "{" + json.dumps(key) + ":" + json.dumps(decoy[key]) + "," + text[1:]
    header["__metadata__"][METADATA_KEY] = text
    return join_text(json.dumps(header), body)


def duplicate_header_key(rng: random.Random, data: bytes, base: nn.Module) -> bytes | None:
    """Repeat a tensor entry of the safetensors header (an earlier, different entry first)."""
    header, body = split(data)
    names = [k for k in header if k != "__metadata__"]
    if not names:
        return None
    name = rng.choice(names)
    decoy = {**header[name], "shape": [0], "data_offsets": [0, 0]}
    text = json.dumps(header)
    text = "{" + json.dumps(name) + ":" + json.dumps(decoy) + "," + text[1:]
    return join_text(text, body)


def _int_tensor(rng: random.Random, data: bytes, base: nn.Module) -> bytes | None:
    """Rewrite stored int32 or int64 indices (kept channels, kept slices of a narrowed base
    tensor) to repeat or leave the base's range, resealed."""
    header, document, body = _document(data)
    packed = [name for name in ("int32", "int64") if name in header]
    if not packed:
        return None
    name = rng.choice(packed)
    entry = header[name]
    start, end = entry["data_offsets"]
    dtype = torch.int32 if name == "int32" else torch.int64
    values = torch.frombuffer(bytearray(body[start:end]), dtype=dtype).clone()
    if not values.numel():
        return None
    position = rng.randrange(values.numel())
    other = int(values[(position + 1) % values.numel()])  # a repeat, when there are two or more
    values[position] = rng.choice([-1, 10**6, -(2**31), other])
    body = body[:start] + values.numpy().tobytes() + body[end:]
    return reseal(header, document, body)


MUTATIONS: dict[str, Mutation] = {
    "truncate": truncate,
    "flip_bits": flip_bits,
    "insert_bytes": insert_bytes,
    "delete_bytes": delete_bytes,
    "header_length": header_length,
    "swap_layout_names": _metadata_edit(_swap_layout_names),
    "layout_dtype": _metadata_edit(_layout_dtype),
    "layout_shape": _metadata_edit(_layout_shape),
    "rank": _metadata_edit(_rank),
    "drop_layer": _metadata_edit(_drop_entry("layers")),
    "drop_module": _metadata_edit(_drop_entry("modules")),
    "drop_bank": _metadata_edit(_drop_entry("banks")),
    "drop_field": _metadata_edit(_drop_field),
    "odd_value": _metadata_edit(_odd_value),
    "change_path": _metadata_edit(_change_path),
    "swap_paths": _metadata_edit(_swap_paths),
    "tensor_record": _metadata_edit(_tensor_record),
    "narrowed_record": _metadata_edit(_narrowed_record),
    "flag": _metadata_edit(_flag),
    "attribute": _metadata_edit(_attribute),
    "masks_record": _metadata_edit(_masks_record),
    "bank": _metadata_edit(_bank),
    "adapter": _metadata_edit(_adapter),
    "duplicate_document_key": duplicate_document_key,
    "duplicate_header_key": duplicate_header_key,
    "indices": _int_tensor,
}
