"""Tiny tasks over one MLP base, and a real uvicorn server on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

import spa
from spa.models import mlp
from spa.serve.app import create_app
from spa.serve.settings import ServeSettings
from spa.tasks import TaskHost, load_task, save_task

from ..tasks.helpers import trained_task

MODEL_OPTIONS = {"in_features": 4, "hidden": [16, 16], "num_classes": 3}
SAMPLE = (4,)


@dataclass
class Tasks:
    """A saved base, task bundles and each task's `load_task` model (the reference)."""

    base: torch.nn.Module
    base_path: Path
    paths: dict[str, Path]
    references: dict[str, torch.nn.Module]

    def expected(self, name: str, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.references[name](inputs)

    def host(self, names=None, **options) -> TaskHost:
        host = TaskHost(self.base, **options)
        for name in self.paths if names is None else names:
            host.add_task(name, self.paths[name])
        return host


def make_tasks(folder: Path, names=("a", "b", "c"), signing_key=None) -> Tasks:
    """An MLP base saved as `base.safetensors` and one SPLoRA bundle per name."""
    torch.manual_seed(0)
    base = mlp(**MODEL_OPTIONS).eval()
    base_path = folder / "base.safetensors"
    save_file(base.state_dict(), base_path)
    x = torch.randn(8, *SAMPLE)
    paths, references = {}, {}
    for index, name in enumerate(names):
        model = trained_task(base, spa.SPLoRAConfig(rank=1 + index % 2), x)
        paths[name] = folder / f"{name}.safetensors"
        save_task(
            model,
            paths[name],
            base_model=base,
            keep_masks=True,
            model_name="mlp",
            model_options=MODEL_OPTIONS,
            signing_key=signing_key,
        )
        references[name] = load_task(base, paths[name])
    return Tasks(base, base_path, paths, references)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running(host: TaskHost, settings: ServeSettings | None = None) -> Iterator[str]:
    """A real uvicorn server for `host` in a thread on loopback; yields its base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        create_app(host, settings), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def predict_json(client, url: str, name: str, inputs: torch.Tensor):
    """POST `inputs` as JSON to task `name`; the response."""
    return client.post(f"{url}/v1/tasks/{name}/predict", json={"inputs": inputs.tolist()})


def outputs_of(response) -> torch.Tensor:
    return torch.tensor(response.json()["outputs"], dtype=torch.float32)
