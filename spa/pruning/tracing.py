"""How spa runs Torch-Pruning's tracer: KV cache off, a time bound, and a word on what it does.

Torch-Pruning 1.6 can loop without end on some graphs (grouped-query attention's `repeat_kv`
expand/reshape, LeViT's attention biases) and a decoder traced with its KV cache on returns a
cache object its tracer cannot read. `traced_for_pruning` turns the cache off for the duration
and bounds the wall time, so an untraceable model is refused in one line instead of hanging.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

import torch
from torch import nn

from spa.errors import UnsupportedLayerError

logger = logging.getLogger(__name__)

DEFAULT_TIME_LIMIT = 300.0  # seconds; tiny test models trace in about one


class _TraceTimeout(BaseException):  # not caught by `except Exception` inside the tracer
    pass


@contextlib.contextmanager
def cache_off(model: nn.Module) -> Iterator[None]:
    """Set `use_cache=False` on every `transformers` config of `model` for the duration."""
    configs = {
        id(config): config
        for module in model.modules()
        if (config := getattr(module, "config", None)) is not None
        and getattr(config, "use_cache", None) is True
    }
    for config in configs.values():
        config.use_cache = False
    try:
        yield
    finally:
        for config in configs.values():
            config.use_cache = True


@contextlib.contextmanager
def time_bound(seconds: float | None, what: str) -> Iterator[None]:
    """Raise `UnsupportedLayerError` naming `what` if the body runs longer than `seconds`.

    The bound is a `SIGALRM` timer, so it applies in the main thread of a Unix process; in
    other threads the body runs unbounded (logged once).
    """
    main = threading.current_thread() is threading.main_thread()
    if seconds is None or not main or not hasattr(signal, "setitimer"):
        if seconds is not None:
            logger.info("tracing %s without a time bound (not the main thread)", what)
        yield
        return

    def expire(signum, frame):
        raise _TraceTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _TraceTimeout:
        raise UnsupportedLayerError(
            f"channel_groups: tracing {what} with Torch-Pruning took more than {seconds:g} s "
            "(its dependency graph does not settle on this model); describe the model with a "
            "spa.families.Family, or raise time_limit="
        ) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def gathered_tables(model: nn.Module) -> list[str]:
    """Modules holding a table of biases read through an integer index buffer of their own
    (LeViT's `attention_biases[:, attention_bias_idxs]`, relative position bias tables).

    Torch-Pruning 1.6 does not settle on such a gather (LeViT traces for many minutes) and
    could not slice the table per head if it did, so a model with one is refused before tracing.

    Returns:
        `"path (table[index])"` for each such module.
    """
    found = []
    for path, module in model.named_modules():
        tables = [n for n, p in module._parameters.items() if p is not None and p.dim() >= 2]
        indices = [
            name
            for name, buffer in module._buffers.items()
            if buffer is not None
            and buffer.dim() >= 2
            and not buffer.is_floating_point()
            and buffer.dtype != torch.bool
        ]
        if tables and indices and not isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            found.append(f"{path or type(module).__name__} ({tables[0]}[{indices[0]}])")
    return found


def model_label(model: nn.Module) -> str:
    """`"a 'gemma' model (GemmaForCausalLM)"`-style words for messages."""
    inner = [m for m in model.modules() if getattr(m, "config", None) is not None]
    config = inner[0].config if inner else None
    model_type = getattr(config, "model_type", None)
    name = type(inner[0] if inner else model).__name__
    return f"this {model_type!r} model ({name})" if model_type else f"this {name}"
