"""The base a run's bundles need: saved with the run when it exists nowhere else.

A config without `model.weights` or `model.path` trains from a randomly initialised base (seeded
per seed); its bundles load only onto that exact base, so the runner saves it next to them as
`seed-<s>/base.pt` (a plain state dict, read with `torch.load(weights_only=True)`):
`spa bundle verify seed-0/step-01-.../task.safetensors --base seed-0/base.pt`. A base read from
a file or directory is referenced by the resolved `config.toml` and not copied.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import torch

from spa.experiments.files import atomic_write_bytes

logger = logging.getLogger(__name__)

BASE_FILE = "base.pt"


def keep_base(config: Any, session: Any, seed_dir: Path, writer: bool = True) -> Path | None:
    """Save the seed's base model to `seed_dir/base.pt` when the config names no base file.

    Args:
        config: the run's `ExperimentConfig`.
        session: the seed's session (its `base` is the model the bundles were made from).
        seed_dir: the seed's folder.
        writer: whether this process writes (rank 0 of a distributed run).

    Returns:
        The saved (or already saved) file; None where the config names the base itself.
    """
    base = getattr(session, "base", None)
    if config.model.weights is not None or config.model.path is not None or base is None:
        return None
    path = seed_dir / BASE_FILE
    if writer and not path.exists():
        buffer = io.BytesIO()
        torch.save(base.state_dict(), buffer)
        atomic_write_bytes(path, buffer.getvalue())
        logger.info("saved the randomly initialised base its bundles need to %s", path)
    return path
