"""Run checkpoints (model, optimiser, RNG states, masks, step) and the runner's seeding."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import torch

from spa.errors import ConfigError
from spa.experiments.files import atomic_write_bytes


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's global generators (the runner owns global RNG state)."""
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The global torch and Python generator states (tensors and plain data, no pickle)."""
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generator states returned by `rng_state` (also after a checkpoint load)."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(path: Path, step: int, state: dict[str, Any]) -> None:
    """Write the state after the completed `step` atomically (the old file or the new, never half).

    Args:
        path: the checkpoint file.
        step: index of the completed step.
        state: the task session's state (tensors and plain data, e.g. the model's and the
            optimiser's `state_dict` and channel masks); the global RNG states are added.
    """
    buffer = io.BytesIO()
    torch.save({**state, "step": step, "rng": rng_state()}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """Read a checkpoint with `torch.load(weights_only=True)`; None if there is none.

    Raises:
        ConfigError: if the file cannot be read, naming it and how to recover.
    """
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # re-raised naming the file; the cause is chained
        raise ConfigError(
            f"{path}: cannot read the checkpoint ({error}); delete it to restart this seed"
        ) from error
