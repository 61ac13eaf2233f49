"""Where a command may write: never over an existing path unless asked, never over its inputs.

`spa export -o` and `spa bundle sign -o` write one file (or, for `--format transformers`, one
directory). An existing path is replaced only with `--overwrite`; the command's own inputs (the
bundle, the base weights file or directory) are never replaced, even with `--overwrite`: a base
overwritten by its own export would stop every bundle made from it from loading.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from spa.errors import ConfigError


def _contains(outer: Path, inner: Path) -> bool:
    """Whether `inner` is `outer` or lies inside it (both resolved; hard links by inode)."""
    if outer.exists() and inner.exists() and os.path.samefile(outer, inner):
        return True
    return inner == outer or outer in inner.parents


def check_output(
    output: str | os.PathLike,
    inputs: Mapping[str, str | os.PathLike | None],
    overwrite: bool,
    directory: bool = False,
) -> Path:
    """Refuse an output path that exists (without `overwrite`) or that is one of the inputs.

    Args:
        output: the path the command will write (`-o`).
        inputs: the command's input paths by role ("bundle", "base"), None where not given.
        overwrite: whether the user passed `--overwrite`.
        directory: the output is a directory (an empty existing one is not "existing").

    Returns:
        The output path.

    Raises:
        ConfigError: naming the path and the input it would replace, or the flag to pass.
    """
    target = Path(output).resolve()
    for role, given in inputs.items():
        if given is None:
            continue
        source = Path(given).resolve()
        if _contains(target, source) or _contains(source, target):
            raise ConfigError(
                f"-o {output}: would replace the {role} {given}, which this command reads; "
                "write to another path (--overwrite never replaces an input)"
            )
    if directory and target.is_dir() and not any(target.iterdir()):
        return Path(output)
    if (target.exists() or target.is_symlink()) and not overwrite:
        what = "exists and is not empty" if target.is_dir() else "exists"
        raise ConfigError(f"-o {output} {what}; pass --overwrite to replace it")
    if directory and target.exists() and not target.is_dir():
        raise ConfigError(f"-o {output} exists and is not a directory")
    if not directory and target.is_dir():
        raise ConfigError(f"-o {output} is a directory; give a file path")
    return Path(output)
