"""`spa serve` as a process: real server, killed and restarted, graceful shutdown, CLI errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from spa.cli import main

from .helpers import SAMPLE, free_port, make_tasks, outputs_of, predict_json

_ROOT = Path(__file__).resolve().parents[2]
_ENV = {**os.environ, "PYTHONPATH": str(_ROOT), "OMP_NUM_THREADS": "1"}


def _start(tasks, port: int, *options: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "spa", "serve", "--base", str(tasks.base_path)]
    for name, path in tasks.paths.items():
        command += ["--task", f"{name}={path}"]
    command += ["--input-shape", ",".join(map(str, SAMPLE)), "--port", str(port), *options]
    process = subprocess.Popen(command, env=_ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"spa serve exited: {process.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("spa serve did not become healthy within 60 s")


def _answers_all_tasks(tasks, url: str) -> None:
    inputs = torch.randn(2, *SAMPLE)
    with httpx.Client(timeout=30) as client:
        for name in tasks.paths:
            response = predict_json(client, url, name, inputs)
            assert response.status_code == 200, response.text
            torch.testing.assert_close(outputs_of(response), tasks.expected(name, inputs))


@pytest.mark.slow
def test_serve_killed_restarted_and_shut_down_gracefully(tmp_path):
    tasks = make_tasks(tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = _start(tasks, port, "--max-wait-ms", "1")
    try:
        _answers_all_tasks(tasks, url)
    finally:
        first.kill()  # SIGKILL: no chance to clean up
        first.wait(timeout=30)
    second = _start(tasks, port, "--max-wait-ms", "1500")  # same port, same answers
    try:
        _answers_all_tasks(tasks, url)
        inputs, answer = torch.randn(1, *SAMPLE), {}

        def in_flight() -> None:  # waits ~1.5 s in the batcher: SIGTERM arrives meanwhile
            answer["response"] = predict_json(httpx.Client(timeout=30), url, "b", inputs)

        thread = threading.Thread(target=in_flight)
        thread.start()
        time.sleep(0.5)
        second.send_signal(signal.SIGTERM)
        thread.join(timeout=30)
        # uvicorn re-raises the signal once it has shut down gracefully
        assert second.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        second.kill()
    assert answer["response"].status_code == 200
    torch.testing.assert_close(outputs_of(answer["response"]), tasks.expected("b", inputs))


def test_serve_cli_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as usage:
        main(["serve", "--base", "b.safetensors", "--task", "no-equals-sign"])
    assert usage.value.code == 2 and "expected NAME=PATH" in capsys.readouterr().err
    missing = tmp_path / "missing.safetensors"
    assert main(["serve", "--base", "b.safetensors", "--task", f"a={missing}"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "missing.safetensors" in error
    with pytest.raises(SystemExit) as shown:
        main(["serve", "--help"])
    assert shown.value.code == 0 and "/v1/tasks/NAME/predict" in capsys.readouterr().out


@pytest.mark.slow  # a fresh interpreter importing spa's CLI
def test_registering_serve_imports_no_web_stack():
    probe = (
        "import sys; from spa.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'prometheus_client') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], env=_ENV, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_serve_input_declaration_errors_name_the_declaration(capsys):
    with pytest.raises(SystemExit) as usage:
        main(["serve", "--base", "b.safetensors", "--input", "input_ids=seq:int8"])
    error = capsys.readouterr().err
    assert usage.value.code == 2 and "input 'input_ids': dtype must be one of" in error
