"""The `spa serve` HTTP application: one `TaskHost`, any number of tasks, micro-batched.

Endpoints:
    POST /v1/tasks/{name}/predict   run task `name` on a batch (JSON or safetensors, see `codec`)
    GET /v1/tasks                   registered tasks with their cache statistics
    POST /v1/tasks/{name}           add a task: the body is the bundle file (`?rename=true` to
                                    serve a signed bundle under another name)
    DELETE /v1/tasks/{name}         remove a task
    GET /health                     liveness: `{"status": "ok", "tasks": N}`
    GET /metrics                    Prometheus text (`metrics`)

Every refusal is a 4xx with `{"detail": "<one line>"}`: 404 unknown task, 413 body over the
limit, 415 unsupported Content-Type, 400 malformed body or name, 409 name taken, 422 wrong
shape/dtype or a bundle that does not fit; it never touches other requests. In-flight requests
finish when the server shuts down gracefully (uvicorn waits for them, then the batcher drains).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import torch
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from spa.errors import BundleError, ConfigError
from spa.serve.batching import Inputs, MicroBatcher
from spa.serve.codec import InputSpec, decode_inputs, encode_outputs, media_type, primary_output
from spa.serve.memory import release_free_memory
from spa.serve.metrics import CONTENT_TYPE, UNKNOWN_TASK, ServerMetrics
from spa.serve.refusals import RequestError
from spa.serve.settings import ServeSettings
from spa.tasks import TaskHost
from spa.tasks.task_names import check_task_name

T = TypeVar("T")
_OFF_LOOP_BYTES = 256 * 1024  # bodies this large are decoded and encoded off the event loop


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:400]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as it is known to exceed `limit` bytes.

    Raises:
        RequestError: 413 over the limit, 400 for a bad Content-Length.
    """
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise RequestError(400, f"bad Content-Length {length!r}")
        if int(length) > limit:
            raise RequestError(413, f"the body has {int(length)} bytes, over the limit of {limit}")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise RequestError(413, f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _unknown(host: TaskHost, name: str) -> RequestError:
    names = host.tasks
    known = ", ".join(names[:20]) + (f" (+{len(names) - 20} more)" if len(names) > 20 else "")
    known = known or "(none)"
    return RequestError(404, f"unknown task {name!r}; registered tasks: {known}")


def create_app(host: TaskHost, settings: ServeSettings | None = None) -> FastAPI:
    """A FastAPI application serving `host`'s tasks; run it with uvicorn.

    Args:
        host: the task host (shared with the worker threads; it may still be changed through
            the task endpoints or by the caller while serving).
        settings: batching knobs and limits (default: `ServeSettings()`).

    Returns:
        The application; its batcher and worker threads start and stop with its lifespan.
    """
    settings = settings or ServeSettings()
    named = {declared.name: declared for declared in settings.named_inputs}
    spec = InputSpec(settings.input_shape, getattr(torch, settings.input_dtype), named)
    metrics = ServerMetrics(host)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="spa-serve")
        app.state.batcher = MicroBatcher(
            lambda task, inputs: run_task(host, task, inputs),
            executor,
            settings.max_batch,
            settings.max_wait_ms / 1000,
            on_batch=metrics.observe_batch,
            max_in_flight=settings.workers,
        )
        try:
            yield
        finally:
            await app.state.batcher.drain()
            executor.shutdown(wait=True)

    app = FastAPI(title="spa serve", lifespan=lifespan)

    @app.exception_handler(RequestError)
    async def refused(_: Request, error: RequestError) -> JSONResponse:
        return _error(error.status, str(error))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in error.errors()
        )
        return _error(422, problems or "invalid request")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "tasks": len(host.tasks)}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/tasks")
    async def tasks() -> dict:
        listed = []
        for name in host.tasks:
            try:
                stats = host.stats(name)
            except ConfigError:  # deleted meanwhile
                continue
            listed.append({"name": name, **stats.__dict__})
        return {"tasks": listed}

    @app.post("/v1/tasks/{name}/predict")
    async def predict(name: str, request: Request) -> Response:
        start, status = time.perf_counter(), 200
        label = name if name in host.tasks else UNKNOWN_TASK
        try:
            if label == UNKNOWN_TASK:
                raise _unknown(host, name)
            kind = media_type(request.headers.get("content-type"))
            body = await read_body(request, settings.max_body_bytes)
            inputs = await _off_loop(len(body), decode_inputs, body, kind, spec)
            outputs = await _run(request.app.state.batcher, host, name, inputs, settings)
            size = outputs.numel() * outputs.element_size()
            content, media = await _off_loop(size, encode_outputs, name, outputs, kind)
            return Response(content, media_type=media)
        except RequestError as error:
            status = error.status
            raise
        except Exception:
            status = 500
            raise
        finally:
            metrics.observe_request(label, status, time.perf_counter() - start)

    @app.post("/v1/tasks/{name}", status_code=201)
    async def add(name: str, request: Request, rename: bool = False) -> dict:
        _check_changes_allowed(settings)
        try:
            check_task_name(name)
        except ConfigError as error:
            raise RequestError(400, str(error)) from None
        if name in host.tasks:
            raise RequestError(409, f"task {name!r} is already registered; DELETE it first")
        body = await read_body(request, settings.max_bundle_bytes)
        await asyncio.get_running_loop().run_in_executor(None, _add, host, name, body, rename)
        return {"name": name, "tasks": host.tasks}

    @app.delete("/v1/tasks/{name}", status_code=204)
    async def delete(name: str) -> Response:
        _check_changes_allowed(settings)
        try:
            host.delete_task(name)
        except ConfigError:
            raise _unknown(host, name) from None
        return Response(status_code=204)

    return app


async def _off_loop(size: int, function: Callable[..., T], *arguments: Any) -> T:
    """`function(*arguments)`, in a thread when `size` bytes make it slow enough to hold up
    the event loop (parsing a large JSON body), else directly (a thread hop costs more)."""
    if size < _OFF_LOOP_BYTES:
        return function(*arguments)
    return await asyncio.get_running_loop().run_in_executor(None, function, *arguments)


def run_task(host: TaskHost, task: str, inputs: Inputs) -> Any:
    """Task `task`'s answer on `inputs`: named inputs go in as keyword arguments (only those
    the model's `forward` names; a `**kwargs` catch-all does not count, as it would silently
    drop a misspelt name), and a mapping output (`ModelOutput`) gives its `primary_output`.

    Raises:
        TypeError: for a name the model's `forward` does not take.
    """
    if not isinstance(inputs, dict):
        return primary_output(host(task, inputs))
    model = host.model(task)
    _check_keywords(model, inputs)
    with torch.no_grad():
        return primary_output(model(**inputs))


def _check_keywords(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    keywords = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    parameters = inspect.signature(model.forward).parameters.values()
    taken = [p.name for p in parameters if p.kind in keywords]
    unknown = sorted(set(inputs) - set(taken))
    if unknown:
        raise TypeError(
            f"the model takes no input(s) {unknown}; its inputs are {', '.join(taken[:12])}"
        )


def _shapes(inputs: Inputs) -> str:
    if isinstance(inputs, dict):
        return ", ".join(f"{name} {list(t.shape)}" for name, t in inputs.items())
    return f"of shape {list(inputs.shape)}"


def _check_changes_allowed(settings: ServeSettings) -> None:
    if not settings.allow_task_changes:
        raise RequestError(403, "this server does not allow adding or removing tasks")


async def _run(
    batcher: MicroBatcher, host: TaskHost, name: str, inputs: Inputs, settings: ServeSettings
) -> torch.Tensor:
    """Task `name`'s outputs on `inputs`, mapping failures to one-line request errors."""
    try:
        return await batcher.submit(name, inputs)
    except ConfigError as error:
        if name not in host.tasks:
            raise _unknown(host, name) from None
        raise RequestError(503, _one_line(error)) from None  # e.g. the base model changed
    except Exception as error:
        if settings.input_shape is None or isinstance(inputs, dict):  # not checked up front
            raise RequestError(
                422,
                f"task {name!r} cannot run on inputs {_shapes(inputs)} "
                f"({type(error).__name__}: {_one_line(error)})",
            ) from None
        raise RequestError(500, f"task {name!r} failed: {_one_line(error)}") from None


def _add(host: TaskHost, name: str, body: bytes, rename: bool) -> None:
    """Register the uploaded bundle `body` as `name` (through a temporary file)."""
    descriptor, path = tempfile.mkstemp(suffix=".safetensors", prefix="spa-upload-")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(body)
        host.add_task(name, path, rename=rename)
        release_free_memory()  # what reading and the dry run freed
    except BundleError as error:
        raise RequestError(422, _one_line(error).replace(path, f"bundle for {name!r}")) from None
    except ConfigError as error:
        status = 409 if name in host.tasks else 400
        raise RequestError(status, _one_line(error)) from None
    finally:
        os.unlink(path)
