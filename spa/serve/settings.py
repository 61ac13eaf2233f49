"""`ServeSettings`: the limits and batching knobs of one `spa serve` server."""

from __future__ import annotations

import math
from dataclasses import dataclass

from spa.errors import ConfigError
from spa.serve.inputs import INPUT_DTYPES, NamedInput, check_distinct


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    """How a server batches requests and what it accepts.

    Args:
        max_batch: most samples run in one forward pass of a task (requests for the same task
            arriving together are concatenated up to this many samples; a larger request runs
            alone).
        max_wait_ms: how long the first request of a batch waits for others to join it.
        max_body_bytes: largest prediction request body; larger ones get 413.
        max_bundle_bytes: largest bundle upload (`POST /v1/tasks/{name}`); larger ones get 413.
        input_shape: the shape of one sample (no batch axis); None accepts any shape (requests
            of different shapes are batched separately).
        input_dtype: the dtype the model takes; JSON inputs are converted to it, safetensors
            inputs must have it.
        named_inputs: declared keyword inputs (`spa.serve.inputs`); when given, named requests
            must give exactly these, each with its sample shape and dtype.
        workers: batches run at once (threads running forward passes). 1 holds one batch's
            activations at a time, and its intra-op threads still use every core; more
            overlap batches (their serial parts) at the cost of their activations' memory.
            The default 2 measured best on a 2-core machine (see the README's serving table).
        allow_task_changes: whether `POST`/`DELETE /v1/tasks/{name}` may add and remove tasks.
    """

    max_batch: int = 8
    max_wait_ms: float = 2.0
    max_body_bytes: int = 16 * 2**20
    max_bundle_bytes: int = 256 * 2**20
    input_shape: tuple[int, ...] | None = None
    input_dtype: str = "float32"
    named_inputs: tuple[NamedInput, ...] = ()
    workers: int = 2
    allow_task_changes: bool = True

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_body_bytes", "max_bundle_bytes", "workers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"serve: {name} must be an integer >= 1, got {value!r}")
        wait = self.max_wait_ms
        if not isinstance(wait, int | float) or not math.isfinite(wait) or not 0 <= wait <= 10_000:
            raise ConfigError(f"serve: max_wait_ms must be within [0, 10000], got {wait!r}")
        if self.input_shape is not None and not all(
            isinstance(size, int) and not isinstance(size, bool) and size >= 1
            for size in self.input_shape
        ):
            raise ConfigError(
                f"serve: input_shape must be positive integers, got {self.input_shape!r}"
            )
        check_distinct(self.named_inputs)
        if self.input_dtype not in INPUT_DTYPES:
            raise ConfigError(
                f"serve: input_dtype must be one of {', '.join(INPUT_DTYPES)}, "
                f"got {self.input_dtype!r}"
            )
