"""The bundle file format: bit-packed masks, checksums, safe reading and atomic writing."""

from __future__ import annotations

import json
import os
import pickle
import struct

import pytest
import safetensors.torch
import torch

from spa.errors import BundleError
from spa.tasks.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    Bundle,
    pack_mask,
    pack_masks,
    read_bundle,
    unpack_mask,
    write_bundle,
)


def _bundle(**metadata) -> Bundle:
    document = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **metadata}
    masks, layout = pack_masks({"a": torch.tensor([True, False, True])})
    document["masks"] = layout
    tensors = {"x": torch.arange(6, dtype=torch.float32).reshape(2, 3), "masks": masks}
    return Bundle(metadata=document, tensors=tensors)


def test_pack_mask_bits_by_hand():
    mask = torch.tensor([1, 0, 1, 0, 0, 0, 0, 1, 1], dtype=torch.bool)
    packed = pack_mask(mask)
    assert packed.tolist() == [0b10100001, 0b10000000]  # big-endian bits, zero padded
    assert torch.equal(unpack_mask(packed, 9), mask)


@pytest.mark.parametrize("length", [1, 7, 8, 9, 100])
def test_pack_mask_roundtrip(length):
    mask = torch.rand(length) < 0.5
    packed = pack_mask(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == (length + 7) // 8
    assert torch.equal(unpack_mask(packed, length), mask)


def test_bundle_roundtrip_keeps_tensors_and_masks(tmp_path):
    path = tmp_path / "task.safetensors"
    size = write_bundle(path, _bundle(note="hello"))
    bundle = read_bundle(path)
    assert size == path.stat().st_size == bundle.size_bytes
    assert bundle.metadata["note"] == "hello"
    assert torch.equal(bundle.tensors["x"], torch.arange(6.0).reshape(2, 3))
    assert bundle.mask("a").tolist() == [True, False, True]


def test_bundle_is_plain_safetensors_with_json_metadata(tmp_path):
    path = tmp_path / "task.safetensors"
    write_bundle(path, _bundle())
    data = path.read_bytes()
    (header_size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_size])
    document = json.loads(header["__metadata__"]["spa_bundle"])
    assert document["format_version"] == FORMAT_VERSION
    assert set(safetensors.torch.load(data)) == {"float32", "uint8"}  # one entry per dtype


def test_read_bundle_refuses_truncated_file(tmp_path):
    path = tmp_path / "task.safetensors"
    write_bundle(path, _bundle())
    data = path.read_bytes()
    for cut in (5, 40, len(data) - 4):
        path.write_bytes(data[:cut])
        with pytest.raises(BundleError, match=f"{path}.*(truncated|damaged)"):
            read_bundle(path)


def test_read_bundle_refuses_altered_value(tmp_path):
    path = tmp_path / "task.safetensors"
    write_bundle(path, _bundle())
    data = bytearray(path.read_bytes())
    data[-20] ^= 0x01  # one bit of a stored float
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{path}: checksum mismatch"):
        read_bundle(path)


def test_read_bundle_refuses_altered_metadata(tmp_path):
    path = tmp_path / "task.safetensors"
    write_bundle(path, _bundle(density=0.3))
    data = path.read_bytes().replace(b"0.3", b"0.9")
    path.write_bytes(data)
    with pytest.raises(BundleError, match="checksum mismatch"):
        read_bundle(path)


def test_read_bundle_refuses_unknown_format_version(tmp_path):
    path = tmp_path / "task.safetensors"
    bundle = _bundle()
    bundle.metadata["format_version"] = 99
    write_bundle(path, bundle)
    with pytest.raises(
        BundleError,
        match=f"unknown bundle format version 99; this spa reads version {FORMAT_VERSION}",
    ):
        read_bundle(path)


def test_read_bundle_refuses_plain_safetensors(tmp_path):
    path = tmp_path / "weights.safetensors"
    safetensors.torch.save_file({"w": torch.ones(2)}, str(path))
    with pytest.raises(BundleError, match="not a spa-task-bundle file"):
        read_bundle(path)


class _Payload:
    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_read_bundle_never_unpickles(tmp_path):
    marker = tmp_path / "executed"
    payload = _Payload()
    payload.target = str(marker)
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(BundleError, match="evil.safetensors"):
        read_bundle(path)
    assert not marker.exists()


def test_read_bundle_missing_file_names_path(tmp_path):
    with pytest.raises(BundleError, match="nothing.safetensors: cannot read bundle"):
        read_bundle(tmp_path / "nothing.safetensors")


def test_write_bundle_crash_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "task.safetensors"
    write_bundle(path, _bundle(version="old"))
    old = path.read_bytes()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        write_bundle(path, _bundle(version="new"))
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["task.safetensors"]  # no temporary left


def test_write_bundle_crash_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "task.safetensors"

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_bundle(path, _bundle())
    assert list(tmp_path.iterdir()) == []
