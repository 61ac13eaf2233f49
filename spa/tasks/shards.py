"""Sharded safetensors checkpoints, read a few tensors at a time and written shard by shard.

`ShardedCheckpoint` reads a `transformers` directory (`model.safetensors.index.json` with its
shards, or one `model.safetensors`) and loads only the tensors asked for, so one decoder block
can be loaded without the rest of the model. `ShardWriter` collects tensors and writes a shard
whenever `max_shard_bytes` is reached, then the index, in the layout `from_pretrained` reads.
It writes the safetensors layout itself (an 8-byte header length, a JSON header, the raw
little-endian bytes) straight from each tensor's memory: `safetensors.torch.save_file` first
copies every tensor into a bytes object, which would double a shard's memory. Neither class is
safe to share between threads.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from spa.errors import ConfigError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
# torch dtype -> safetensors dtype name (the dtypes model weights and buffers use)
_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict) -> None:
    """Write contiguous CPU `tensors` as one safetensors file without copying their data.

    Args:
        path: the file to write.
        tensors: contiguous CPU tensors of the dtypes in `_DTYPES`.
        metadata: string-to-string `__metadata__`.
    """
    if sys.byteorder != "little" or any(t.dtype not in _DTYPES for t in tensors.values()):
        safetensors.torch.save_file(dict(tensors), path, metadata=metadata)  # copies, but exact
        return
    header: dict = {"__metadata__": metadata}
    offset = 0
    for key, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        header[key] = {
            "dtype": _DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        for tensor in tensors.values():
            if tensor.numel():
                handle.write(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))


class ShardedCheckpoint:
    """The safetensors weights of a `transformers` directory, loaded by key on demand.

    Args:
        directory: holds `model.safetensors.index.json` (and its shards) or `model.safetensors`.

    Raises:
        ConfigError: if neither file is there, or the index names a shard that is missing.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        index, single = self.directory / INDEX, self.directory / SINGLE
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ConfigError(f"{index}: no 'weight_map' object")
            self.files = {str(key): str(name) for key, name in weight_map.items()}
        elif single.is_file():
            with safetensors.safe_open(single, framework="pt") as handle:
                self.files = dict.fromkeys(handle.keys(), SINGLE)
        else:
            raise ConfigError(f"{self.directory}: no {INDEX} or {SINGLE} (safetensors weights)")
        for name in sorted(set(self.files.values())):
            if not (self.directory / name).is_file():
                raise ConfigError(f"{self.directory / name}: shard named in {INDEX} is missing")

    def keys(self) -> list[str]:
        """Every tensor name, sorted."""
        return sorted(self.files)

    def load(self, keys: Iterable[str]) -> dict[str, torch.Tensor]:
        """Load the named tensors (on the CPU), opening each shard once.

        Raises:
            ConfigError: for a key the checkpoint does not hold.
        """
        by_file: dict[str, list[str]] = {}
        for key in keys:
            if key not in self.files:
                raise ConfigError(f"{self.directory}: the checkpoint has no tensor {key!r}")
            by_file.setdefault(self.files[key], []).append(key)
        tensors = {}
        for name, wanted in sorted(by_file.items()):
            with safetensors.safe_open(self.directory / name, framework="pt") as handle:
                for key in wanted:
                    tensors[key] = handle.get_tensor(key)
        return tensors


class ShardWriter:
    """Write tensors as `model-0000i-of-0000n.safetensors` shards plus their index.

    Args:
        directory: an existing, empty directory.
        max_shard_bytes: a shard is written once the tensors held reach this size (a tensor
            larger than it gets a shard of its own).
    """

    def __init__(self, directory: str | Path, max_shard_bytes: int) -> None:
        if max_shard_bytes < 1:
            raise ConfigError(f"max_shard_bytes must be >= 1, got {max_shard_bytes!r}")
        self.directory = Path(directory)
        self.max_shard_bytes = max_shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.written: list[tuple[str, list[str]]] = []  # (temporary file name, its keys)
        self.total_bytes = 0

    def add(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Queue tensors (copied to contiguous CPU memory), writing shards as they fill up."""
        for key, tensor in tensors.items():
            if key in self.pending or any(key in keys for _, keys in self.written):
                raise ConfigError(f"ShardWriter: tensor {key!r} written twice")
            size = tensor.numel() * tensor.element_size()
            if self.pending and self.pending_bytes + size > self.max_shard_bytes:
                self._flush()
            self.pending[key] = tensor.detach().to("cpu").contiguous()
            self.pending_bytes += size
            self.total_bytes += size

    def _flush(self) -> None:
        name = f"part-{len(self.written):05d}.safetensors"
        write_safetensors(self.directory / name, self.pending, {"format": "pt"})
        self.written.append((name, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> dict[str, str]:
        """Write the last shard, name the shards `model-0000i-of-0000n.safetensors` and write
        the index; returns its weight map."""
        if self.pending or not self.written:
            self._flush()
        count = len(self.written)
        weight_map = {}
        for number, (temporary, keys) in enumerate(self.written, start=1):
            final = f"model-{number:05d}-of-{count:05d}.safetensors"
            (self.directory / temporary).rename(self.directory / final)
            weight_map.update(dict.fromkeys(keys, final))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.directory / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        return weight_map
