"""A one-rank gloo process group for tests of the collective code paths."""

from __future__ import annotations

import socket

import pytest

from spa.distributed import init_distributed, shutdown_distributed


@pytest.fixture
def world_of_one(monkeypatch):
    """A real gloo group with one rank, initialised through the torchrun variables."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name, value in {
        "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    context = init_distributed(backend="gloo", timeout_s=30)
    yield context
    shutdown_distributed()
