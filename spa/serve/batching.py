"""`MicroBatcher`: concurrent requests for the same task run as one forward pass.

Each task has a queue and, while it has requests, one worker coroutine: it takes the oldest
request, waits up to `max_wait` for others of the same signature (sample shape and dtype; for
named inputs, the names and each one's sample shape and dtype) to join, up to `max_batch`
samples, concatenates them along the batch axis (each named input on its own), runs them in
a thread pool (so the event loop keeps accepting requests and other tasks' batches run in
parallel) and splits the outputs back. At most `max_in_flight` batches (over all tasks) are
taken at a time: the rest of the requests keep waiting in their queues, where later arrivals
can still join them, instead of as batches queued in the pool (which would hold their inputs
and start their activations as soon as a thread frees up). A batch that fails is rerun
request by request, so one bad request never fails the others it was batched with. Different
tasks never share a batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)

Inputs = torch.Tensor | dict[str, torch.Tensor]
"""One request's input batch: a tensor (positional) or named tensors (keyword arguments)."""
Run = Callable[[str, Inputs], torch.Tensor]


def signature(inputs: Inputs) -> tuple:
    """What requests must share to be batched: each tensor's name, sample shape and dtype."""
    named = inputs.items() if isinstance(inputs, dict) else [(None, inputs)]
    return tuple((name, tuple(t.shape[1:]), t.dtype) for name, t in named)


def batch_size(inputs: Inputs) -> int:
    """The number of samples in `inputs` (named inputs share it)."""
    tensor = next(iter(inputs.values())) if isinstance(inputs, dict) else inputs
    return tensor.shape[0]


def concatenate(parts: list[Inputs]) -> Inputs:
    """`parts` (of one signature) joined along the batch axis, each named input on its own."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], dict):
        return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
    return torch.cat(parts)


@dataclass
class _Request:
    inputs: Inputs
    future: asyncio.Future
    key: tuple = ()
    size: int = 0

    def __post_init__(self) -> None:
        self.key, self.size = signature(self.inputs), batch_size(self.inputs)

    def fits(self, other: _Request) -> bool:
        """True if the two can share a batch (same signature)."""
        return self.key == other.key


@dataclass
class _Queue:
    requests: deque[_Request] = field(default_factory=deque)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.Task | None = None


class MicroBatcher:
    """Groups concurrent requests per task into batches; use from one event loop.

    Args:
        run: runs one task on one batch (called in `executor`); returns outputs batch first.
        executor: the thread pool running `run`.
        max_batch: most samples per batch (a larger single request runs alone).
        max_wait: seconds the oldest request waits for others to join its batch.
        on_batch: called with (task, samples) for every batch run (metrics).
        max_in_flight: most batches running at once (None: no limit beyond the executor's);
            set it to the executor's thread count.
    """

    def __init__(
        self,
        run: Run,
        executor: Executor,
        max_batch: int,
        max_wait: float,
        on_batch: Callable[[str, int], None] | None = None,
        max_in_flight: int | None = None,
    ) -> None:
        self._run = run
        self._executor = executor
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._on_batch = on_batch
        self._queues: dict[str, _Queue] = {}
        self._slots = None if max_in_flight is None else asyncio.Semaphore(max_in_flight)

    async def submit(self, task: str, inputs: Inputs) -> torch.Tensor:
        """The outputs of `task` on `inputs` (a batch, or named batches), batched with others.

        Raises:
            Exception: whatever `run` raised for this request.
        """
        queue = self._queues.setdefault(task, _Queue())
        request = _Request(inputs, asyncio.get_running_loop().create_future())
        queue.requests.append(request)
        queue.arrived.set()
        if queue.worker is None:
            queue.worker = asyncio.create_task(self._work(task, queue))
        return await request.future

    async def drain(self) -> None:
        """Wait until every queued request has been answered."""
        workers = [q.worker for q in self._queues.values() if q.worker is not None]
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)

    async def _work(self, task: str, queue: _Queue) -> None:
        try:
            while queue.requests:
                await self._gather(queue)
                if self._slots is None:
                    await self._answer(task, self._take(queue))
                    continue
                async with self._slots:  # later requests join the batch while it waits
                    await self._answer(task, self._take(queue))
        finally:
            queue.worker = None
            if not queue.requests and self._queues.get(task) is queue:
                del self._queues[task]

    def _ready(self, queue: _Queue) -> int:
        first = queue.requests[0]
        return sum(r.size for r in queue.requests if r.fits(first))

    async def _gather(self, queue: _Queue) -> None:
        """Wait until the oldest request's batch is full or has waited `max_wait`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while self._ready(queue) < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            queue.arrived.clear()
            try:
                await asyncio.wait_for(queue.arrived.wait(), remaining)
            except TimeoutError:
                return

    def _take(self, queue: _Queue) -> list[_Request]:
        """The oldest request and the later ones that fit with it, up to `max_batch` samples."""
        first = queue.requests.popleft()
        batch, samples, kept = [first], first.size, deque()
        while queue.requests:
            request = queue.requests.popleft()
            size = request.size
            if request.fits(first) and samples + size <= self.max_batch:
                batch.append(request)
                samples += size
            else:
                kept.append(request)
        queue.requests.extendleft(reversed(kept))
        return batch

    async def _answer(self, task: str, batch: list[_Request]) -> None:
        """Run `batch` and resolve each request's future (alone, if the batch fails)."""
        loop = asyncio.get_running_loop()
        live = [r for r in batch if not r.future.done()]  # a client may have gone away
        if not live:
            return
        sizes = [r.size for r in live]
        inputs = concatenate([r.inputs for r in live])
        try:
            outputs = await loop.run_in_executor(self._executor, self._checked, task, inputs)
        except Exception as error:
            if len(live) == 1:
                _resolve(live[0].future, error=error)
                return
            logger.debug(
                "batch of %d for task %r failed (%s); running alone", len(live), task, error
            )
            for request in live:
                await self._answer(task, [request])
            return
        if self._on_batch is not None:
            self._on_batch(task, sum(sizes))
        for request, part in zip(live, torch.split(outputs, sizes), strict=True):
            _resolve(request.future, result=part)

    def _checked(self, task: str, inputs: Inputs) -> torch.Tensor:
        outputs = self._run(task, inputs)
        samples = batch_size(inputs)
        if not isinstance(outputs, torch.Tensor) or outputs.dim() < 1:
            raise TypeError(f"task {task!r} returned {type(outputs).__name__}, not a tensor")
        if outputs.shape[0] != samples:
            raise ValueError(
                f"task {task!r} returned {outputs.shape[0]} outputs for {samples} samples"
            )
        return outputs


def _resolve(
    future: asyncio.Future, result: torch.Tensor | None = None, error: Exception | None = None
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
