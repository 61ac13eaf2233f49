"""The README's `spa serve` example runs as written: its Python block writes the base and the
bundles, its bash block starts the server and asks it with curl (on a free port)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spa.models import mlp
from spa.tasks import load_task

from ..test_readme_examples import blocks
from .helpers import free_port

_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_readme_serve_example_runs_as_written(tmp_path: Path, monkeypatch) -> None:
    (python,) = [b for b in blocks("python") if '"base.safetensors"' in b]
    (bash,) = [b for b in blocks("bash") if "spa serve" in b]
    monkeypatch.chdir(tmp_path)
    exec(compile(python, "README.md", "exec"), {"__name__": "__readme__"})  # noqa: S102
    port = free_port()
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "spa").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m spa "$@"\n')
    (binary / "spa").chmod(0o755)
    environment = {
        **os.environ,
        "PATH": f"{binary}:{os.environ['PATH']}",
        "PYTHONPATH": str(_ROOT),
        "OMP_NUM_THREADS": "1",
    }
    process = subprocess.Popen(
        ["bash", "-c", f"set -e\n{bash.replace('8765', str(port))}"],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, stderr
    answer = json.loads(next(line for line in stdout.splitlines() if '"outputs"' in line))
    base = mlp(in_features=4, hidden=16, num_classes=3)
    from safetensors.torch import load_file

    base.load_state_dict(load_file(tmp_path / "base.safetensors"))
    inputs = torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    with torch.no_grad():
        expected = load_task(base.eval(), tmp_path / "parity.safetensors")(inputs)
    assert answer["task"] == "parity" and answer["shape"] == [2, 3]
    torch.testing.assert_close(torch.tensor(answer["outputs"]), expected)
    assert 'spa_requests_total{status="200",task="parity"} 1.0' in stdout
