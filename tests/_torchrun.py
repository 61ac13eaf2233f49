"""Launching `torchrun --standalone` from tests, with one retry for launch-level flakes."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def describe(done: subprocess.CompletedProcess) -> str:
    """Exit code, stdout and stderr tails of a finished launch, for assertion messages."""
    return (
        f"exit code {done.returncode}\nstdout:\n{done.stdout[-3000:]}\n"
        f"stderr:\n{done.stderr[-6000:]}"
    )


def torchrun(
    arguments: list[str], env: dict[str, str], timeout: int, retry: bool = True
) -> subprocess.CompletedProcess:
    """Run `python -m torch.distributed.run --standalone ARGUMENTS` in the repository root.

    A launch that exits non-zero is retried once (on a busy shared machine the standalone
    rendezvous occasionally fails to start); a real failure fails twice and is returned as is.
    Everything spa runs under torchrun is resumable or deterministic, so a retry is equivalent.
    Pass `retry=False` for launches that are meant to fail.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", *arguments]
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if retry and done.returncode != 0:
        warnings.warn(f"torchrun launch failed, retrying once:\n{describe(done)}", stacklevel=2)
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    return done
