"""Run-directory file helpers: atomic writes and JSON-lines metrics."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from spa._files import write_atomic
from spa.errors import ConfigError


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` via a temporary file in the same folder and `os.replace`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically: readers see the old file or the new one, never half."""
    write_atomic(path, data)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file, skipping a torn last line (from a killed writer).

    Args:
        path: the file.

    Returns:
        The records.
    """
    records = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines) - 1:
                break  # torn last line of an interrupted run
            raise ConfigError(f"{path}: line {number + 1} is not valid JSON") from None
    return records


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON record as a line and flush it to disk.

    Args:
        path: the JSON-lines file (created if missing).
        record: JSON-serialisable data.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as file:
        file.write(json.dumps(record, sort_keys=True) + "\n")
        file.flush()
        os.fsync(file.fileno())
