"""`MicroBatcher`: requests for one task share forward passes, up to the limits, and a failing
request fails alone."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from spa.serve.batching import MicroBatcher

SCALE = {"a": 2.0, "b": -3.0}


def _batches(requests, max_batch=8, max_wait=5.0):
    """Submit `requests` [(task, inputs)] at once; (answers or errors, batches run)."""
    calls = []

    def run(task: str, inputs: torch.Tensor) -> torch.Tensor:
        calls.append((task, inputs.shape[0], tuple(inputs.shape[1:])))
        if torch.isnan(inputs).any():
            raise ValueError("NaN input")
        return inputs * SCALE[task]

    async def main():
        with ThreadPoolExecutor(2) as executor:
            batcher = MicroBatcher(run, executor, max_batch, max_wait)
            answers = await asyncio.gather(
                *(batcher.submit(task, inputs) for task, inputs in requests),
                return_exceptions=True,
            )
            await batcher.drain()
        return answers

    return asyncio.run(main()), calls


def _check(requests, answers):
    for (task, inputs), answer in zip(requests, answers, strict=True):
        assert torch.equal(answer, inputs * SCALE[task])


def test_concurrent_requests_share_one_batch_when_full():
    requests = [("a", torch.randn(1, 3)) for _ in range(3)] + [("a", torch.randn(1, 3))]
    answers, calls = _batches(requests, max_batch=4, max_wait=30.0)  # full long before 30 s
    _check(requests, answers)
    assert calls == [("a", 4, (3,))]


def test_batches_respect_max_batch_and_never_mix_tasks_or_shapes():
    requests = [("a", torch.randn(1, 3)) for _ in range(5)]
    requests += [("b", torch.randn(2, 3)), ("a", torch.randn(1, 5))]
    answers, calls = _batches(requests, max_batch=2, max_wait=0.05)
    _check(requests, answers)
    a_calls = [(n, shape) for task, n, shape in calls if task == "a"]
    assert sorted(a_calls) == sorted([(2, (3,)), (2, (3,)), (1, (3,)), (1, (5,))])
    assert [c for c in calls if c[0] == "b"] == [("b", 2, (3,))]


def test_a_larger_request_runs_alone():
    requests = [("a", torch.randn(5, 3)), ("a", torch.randn(1, 3))]
    answers, calls = _batches(requests, max_batch=2, max_wait=0.01)
    _check(requests, answers)
    assert sorted(n for _, n, _ in calls) == [1, 5]


def test_a_failing_request_fails_alone():
    bad = torch.full((1, 3), float("nan"))
    requests = [("a", torch.randn(1, 3)), ("a", bad), ("a", torch.randn(1, 3))]
    answers, calls = _batches(requests, max_batch=3, max_wait=30.0)
    assert isinstance(answers[1], ValueError)
    _check([requests[0], requests[2]], [answers[0], answers[2]])
    assert [n for _, n, _ in calls] == [3, 1, 1, 1]  # the batch, then each request alone


@pytest.mark.parametrize("max_wait", [0.0, 0.01])
def test_a_lone_request_is_answered_after_max_wait(max_wait):
    requests = [("b", torch.randn(2, 4))]
    answers, calls = _batches(requests, max_batch=8, max_wait=max_wait)
    _check(requests, answers)
    assert calls == [("b", 2, (4,))]


def test_named_inputs_are_concatenated_per_name_and_grouped_by_signature():
    calls = []

    def run(task: str, inputs: dict) -> torch.Tensor:
        calls.append({name: tuple(t.shape) for name, t in inputs.items()})
        return inputs["x"].sum(1) * inputs["w"].sum(1)  # couples the names row by row

    def named(rows: int, width: int, w_name: str = "w") -> dict:
        return {"x": torch.randn(rows, width), w_name: torch.randn(rows, 2)}

    requests = [named(1, 3), named(2, 3), named(1, 5), named(1, 3, "v")]

    async def main():
        with ThreadPoolExecutor(2) as executor:
            batcher = MicroBatcher(run, executor, 8, 0.05)
            return await asyncio.gather(
                *(batcher.submit("a", r) for r in requests), return_exceptions=True
            )

    answers = asyncio.run(main())
    for request, answer in zip(requests[:3], answers[:3], strict=True):
        assert torch.allclose(answer, request["x"].sum(1) * request["w"].sum(1))
    assert isinstance(answers[3], KeyError)  # its own batch: "w" is missing only there
    assert sorted(map(str, calls)) == sorted(
        map(
            str,
            [{"x": (3, 3), "w": (3, 2)}, {"x": (1, 5), "w": (1, 2)}, {"x": (1, 3), "v": (1, 2)}],
        )
    )


def _overlap(max_in_flight):
    """Three tasks whose runs take 100 ms; (most runs at once, samples per run) for a first
    wave of one request per task and a second wave of three per task sent 10 ms later."""
    import threading
    import time

    running, most, sizes, lock = [0], [0], [], threading.Lock()

    def run(task: str, inputs: torch.Tensor) -> torch.Tensor:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            sizes.append(inputs.shape[0])
        time.sleep(0.1)
        with lock:
            running[0] -= 1
        return inputs * 2

    async def main():
        with ThreadPoolExecutor(3) as executor:
            batcher = MicroBatcher(run, executor, 8, 0.0, max_in_flight=max_in_flight)
            first = [batcher.submit(t, torch.randn(1, 2)) for t in "abc"]
            firsts = [asyncio.ensure_future(f) for f in first]
            await asyncio.sleep(0.01)
            second = [batcher.submit(t, torch.randn(1, 2)) for t in "abc" for _ in range(3)]
            await asyncio.gather(*firsts, *second)

    asyncio.run(main())
    return most[0], sizes


def test_max_in_flight_caps_concurrent_batches_and_waiting_requests_join_one_batch():
    most, sizes = _overlap(max_in_flight=1)
    assert most == 1
    assert sizes == [1, 4, 4, 3]  # b and c waited for the slot and took the second wave along
    unlimited, sizes = _overlap(max_in_flight=None)
    assert unlimited == 3 and sorted(sizes) == [1, 1, 1, 3, 3, 3]
