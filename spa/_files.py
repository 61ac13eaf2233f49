"""The one atomic file writer of spa, and its one permission rule (the process umask).

Every file spa writes (bundles, exported models, tables, plots, config.toml, metrics,
checkpoints, public keys) goes through `write_atomic`: the bytes go to a temporary file in the
target directory, are flushed to disk, get the mode `open()` would give (0o666 minus the umask)
and are renamed over the target, so a crash leaves the old file or the new one, never half.
Only a private key asks for another mode (0o600).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["umask", "write_atomic"]


def umask() -> int:
    """The process umask (read without changing it for longer than one call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(
    path: str | os.PathLike, data: bytes | Callable[[str], None], mode: int | None = None
) -> None:
    """Write `data` to `path` through a temporary file and `os.replace`.

    Args:
        path: destination file (its folder is created if missing).
        data: the whole content, or a function that writes it to the temporary file's path it
            is given (e.g. `safetensors.torch.save_file`), so large content need not be held
            in memory as bytes first.
        mode: permission bits of the file; None gives what `open()` would (0o666 minus the
            umask), where a plain temporary file would stay 0o600.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(handle, "wb") as file:
            if callable(data):
                data(temporary)
            else:
                file.write(data)
            file.flush()
            os.chmod(temporary, 0o666 & ~umask() if mode is None else mode)
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
