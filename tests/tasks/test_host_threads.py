"""TaskHost shared between threads (issue 23): every call names its task, builds never share
buffers, and no output is another task's or a corrupted model's."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

import spa
from spa.tasks import TaskHost, load_task, save_task
from spa.tasks.scratch import Scratch, ScratchPool

from ..conftest import ResidualNet
from .helpers import pruned_task

THREADS = 8


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """A residual base, five compacted task bundles and each task's `load_task` reference."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("threads")
    base = ResidualNet().eval()
    x = torch.randn(2, 3, 8, 8)
    paths, references = {}, {}
    for index, density in enumerate((0.3, 0.5, 0.6, 0.7, 0.8)):
        name = f"t{index}"
        paths[name] = folder / f"{name}.safetensors"
        task = spa.compacted(pruned_task(base, x, spa.SPLoRAConfig(rank=1 + index % 3), density))
        save_task(task, paths[name], base_model=base)
        with torch.no_grad():
            references[name] = load_task(base, paths[name])(x)
    return base, x, paths, references


def _host(tasks, **options) -> TaskHost:
    base, _, paths, _ = tasks
    host = TaskHost(base, **options)
    for name, path in paths.items():
        host.add_task(name, path)
    return host


def _hammer(host: TaskHost, tasks, calls: int) -> list[str]:
    """THREADS threads each calling every task in turn `calls` times; the wrong answers."""
    _, x, paths, references = tasks
    names = sorted(paths)
    start = threading.Barrier(THREADS)

    def worker(offset: int) -> list[str]:
        start.wait()
        wrong = []
        for step in range(calls):
            name = names[(offset + step) % len(names)]
            if not torch.equal(host(name, x), references[name]):
                wrong.append(name)
        return wrong

    with ThreadPoolExecutor(THREADS) as pool:
        return [name for result in pool.map(worker, range(THREADS)) for name in result]


def test_references_are_distinct(tasks):
    _, _, _, references = tasks
    outputs = list(references.values())
    assert all(not torch.allclose(a, b) for i, a in enumerate(outputs) for b in outputs[i + 1 :])


def test_task_host_many_threads_small_cache_no_wrong_output(tasks):
    host = _host(tasks, cache_size=2)
    assert _hammer(host, tasks, calls=30) == []
    stats = [host.stats(name) for name in host.tasks]
    assert sum(s.builds for s in stats) > len(stats)  # the small cache really evicted
    assert sum(s.hits + s.builds for s in stats) >= THREADS * 30


def test_task_host_concurrent_builds_match_references(tasks, monkeypatch):
    """Every call builds (zero-byte budget): concurrent builds of different tasks used to share
    one scratch buffer and return models with each other's weights. Each work buffer handed out
    yields the processor first, so builds interleave at exactly the points that used to clash."""
    handout = Scratch.get

    def get_slowly(self, *arguments):
        time.sleep(0.0002)
        return handout(self, *arguments)

    monkeypatch.setattr(Scratch, "get", get_slowly)
    host = _host(tasks, cache_bytes=0)
    assert _hammer(host, tasks, calls=12) == []
    assert host.cached_tasks() == []
    assert sum(host.stats(name).builds for name in host.tasks) == THREADS * 12


def test_task_host_returned_model_is_not_changed_by_later_builds(tasks):
    _, x, _, references = tasks
    host = _host(tasks, cache_bytes=0)
    held = host.model("t0")
    state = {key: value.clone() for key, value in held.state_dict().items()}
    assert _hammer(host, tasks, calls=6) == []
    assert all(torch.equal(value, state[key]) for key, value in held.state_dict().items())
    with torch.no_grad():
        assert torch.equal(held(x), references["t0"])


def test_task_host_builds_each_task_once_under_contention(tasks):
    host = _host(tasks, cache_size=None)
    start = threading.Barrier(THREADS)

    def get(_: int) -> nn.Module:
        start.wait()
        return host.model("t1")

    with ThreadPoolExecutor(THREADS) as pool:
        models = list(pool.map(get, range(THREADS)))
    assert all(model is models[0] for model in models)
    stats = host.stats("t1")
    assert (stats.builds, stats.hits) == (1, THREADS - 1)


def test_task_host_add_and_delete_while_serving(tasks):
    base, x, paths, references = tasks
    host = TaskHost(base, cache_size=2)
    host.add_task("t0", paths["t0"])
    stop = threading.Event()
    wrong = []

    def serve() -> None:
        while not stop.is_set():
            if not torch.equal(host("t0", x), references["t0"]):
                wrong.append("t0")

    threads = [threading.Thread(target=serve) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for round_ in range(3):
            for name in ("t1", "t2"):
                host.add_task(name, paths[name])
                assert torch.equal(host(name, x), references[name])
            for name in ("t1", "t2"):
                host.delete_task(name)
            assert host.tasks == ["t0"], round_
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert wrong == []


def test_scratch_pool_never_lends_one_scratch_twice_at_once():
    pool = ScratchPool(keep=1)
    with pool.borrow() as first, pool.borrow() as second:
        assert first is not second
    with pool.borrow() as again:  # returned scratches are reused
        assert again in (first, second)
