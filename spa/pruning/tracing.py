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
    """Modules gathering per-head biases through an integer index buffer of their own: a 2-D
    table with one row per head (the module's `num_attention_heads` / `num_heads`) whose
    columns an index buffer picks (LeViT's `attention_biases[:, attention_bias_idxs]`).

    Torch-Pruning 1.6 does not settle on such a gather (LeViT traces for many minutes) and
    could not slice the table per head if it did, so a model with one is refused before tracing.

    Returns:
        `"path (table[:, index])"` for each such module.
    """
    found = []
    for path, module in model.named_modules():
        heads = getattr(module, "num_attention_heads", getattr(module, "num_heads", None))
        indices = {
            name: int(buffer.max())
            for name, buffer in module._buffers.items()
            if buffer is not None
            and buffer.numel()
            and not buffer.is_meta  # no values to read (planning on the meta device)
            and buffer.dtype in (torch.int64, torch.int32)
        }
        for name, table in module._parameters.items():
            if table is None or table.dim() != 2 or table.shape[0] != heads:
                continue
            index = next((n for n, top in indices.items() if top < table.shape[1]), None)
            if index is not None:
                found.append(f"{path or type(module).__name__} ({name}[:, {index}])")
    return found


def model_label(model: nn.Module) -> str:
    """`"a 'gemma' model (GemmaForCausalLM)"`-style words for messages."""
    inner = [m for m in model.modules() if getattr(m, "config", None) is not None]
    config = inner[0].config if inner else None
    model_type = getattr(config, "model_type", None)
    name = type(inner[0] if inner else model).__name__
    return f"this {model_type!r} model ({name})" if model_type else f"this {name}"
