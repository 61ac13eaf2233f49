"""`spa serve`: an HTTP server over one base model and any number of task bundles.

Registration imports only argparse; torch, the base model and the web stack are imported when
the command runs, so `spa --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from spa.errors import ConfigError

logger = logging.getLogger(__name__)

_EPILOG = """example:
  spa serve --base base.safetensors --task parity=parity.safetensors --input-shape 4 --port 8000
  curl -s localhost:8000/v1/tasks/parity/predict -H 'Content-Type: application/json' \\
      -d '{"inputs": [[0.5, -1.0, 2.0, 0.0]]}'
endpoints: POST /v1/tasks/NAME/predict, GET /v1/tasks, POST|DELETE /v1/tasks/NAME (bundle
upload / removal), GET /health, GET /metrics (Prometheus).
memory versus speed: the task models hold only what each task changed (next to one base);
the rest is activations and what malloc keeps. --workers 1 runs one batch at a time (intra-op
threads, OMP_NUM_THREADS, still use every core), the default 2 overlaps two batches' serial
parts for throughput at the cost of their activations; --max-batch bounds one batch's
activations; --cache-bytes bounds the cached task models (others are rebuilt on use);
--malloc-arena-max caps glibc's arenas; --malloc-mmap-threshold returns large tensors to the
system when freed (lowest memory, more CPU time per forward pass)."""


def _task(text: str) -> tuple[str, str]:
    name, separator, path = text.partition("=")
    if not separator or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, path


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 3,32,32, got {text!r}") from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return shape


def _named_input(text: str):
    from spa.serve.inputs import parse_named_input

    try:
        return parse_named_input(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `serve` sub-command."""
    parser = subparsers.add_parser(
        "serve",
        help="serve task bundles over one base model via HTTP",
        description="Serve many tasks over one base model: micro-batched predictions per task, "
        "tasks added and removed at run time, health and Prometheus metrics.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--base",
        required=True,
        help="base checkpoint: state-dict file (.safetensors/.pt; architecture from --model or "
        "the first bundle) or a local transformers model directory",
    )
    parser.add_argument("--model", help="spa.models registry name of the base architecture")
    parser.add_argument("--num-classes", type=int, help="num_classes of the model builder")
    parser.add_argument(
        "--model-arg", action="append", metavar="KEY=VALUE", help="further builder argument"
    )
    parser.add_argument(
        "--task",
        action="append",
        type=_task,
        default=[],
        metavar="NAME=PATH",
        help="a task bundle to serve under NAME (repeatable)",
    )
    parser.add_argument(
        "--trusted-key",
        action="append",
        metavar="PEM",
        help="accept only bundles signed by this public key (repeatable)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument(
        "--input-shape",
        type=_shape,
        help="one sample's shape of a single-tensor request, e.g. 3,224,224 (also runs every "
        "added task once on a zero sample)",
    )
    parser.add_argument(
        "--input-dtype", default="float32", help="the dtype of a single-tensor request"
    )
    parser.add_argument(
        "--input",
        action="append",
        type=_named_input,
        default=[],
        dest="named_inputs",
        metavar="NAME=SHAPE:DTYPE",
        help="declare a named (keyword) input, repeatable: one sample's sizes, each an integer, "
        "* (any) or a size name that must agree between inputs, e.g. --input input_ids=seq:int64 "
        "--input attention_mask=seq:int64; named requests must then give exactly the declared "
        "inputs (422 naming the one at fault)",
    )
    parser.add_argument("--max-batch", type=int, default=8, help="most samples per forward")
    parser.add_argument(
        "--max-wait-ms", type=float, default=2.0, help="how long a request waits for a batch"
    )
    parser.add_argument("--max-body-bytes", type=int, default=16 * 2**20, help="request limit")
    parser.add_argument("--max-bundle-bytes", type=int, default=256 * 2**20, help="upload limit")
    parser.add_argument(
        "--cache-bytes", type=int, help="byte budget of cached task models (default: no limit)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="batches run at once (forward-pass threads); each holds its activations",
    )
    parser.add_argument(
        "--malloc-arena-max",
        type=int,
        default=2,
        metavar="N",
        help="glibc malloc arenas of this process (fewer keep less freed memory; 0: glibc's "
        "default of 8 per core)",
    )
    parser.add_argument(
        "--malloc-mmap-threshold",
        type=int,
        metavar="BYTES",
        help="allocations this large are returned to the system when freed, e.g. 262144 "
        "(default: glibc's growing threshold; a fixed one lowers peak memory and costs CPU "
        "time in page faults)",
    )
    parser.add_argument(
        "--read-only", action="store_true", help="refuse adding or removing tasks over HTTP"
    )
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        help="seconds to let in-flight requests finish on shutdown",
    )
    parser.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from spa.serve.memory import AllocatorSettings, configure_allocator, release_free_memory

    allocator = AllocatorSettings(
        mmap_threshold=args.malloc_mmap_threshold, arena_max=args.malloc_arena_max or None
    )
    configure_allocator(allocator)  # before any worker thread makes its own arena
    import torch
    import uvicorn

    from spa.cli.bundle import load_base
    from spa.serve.app import create_app
    from spa.serve.settings import ServeSettings
    from spa.tasks import TaskHost, read_bundle

    settings = ServeSettings(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_body_bytes=args.max_body_bytes,
        max_bundle_bytes=args.max_bundle_bytes,
        input_shape=args.input_shape,
        input_dtype=args.input_dtype,
        named_inputs=tuple(args.named_inputs),
        workers=args.workers,
        allow_task_changes=not args.read_only,
    )
    names = [name for name, _ in args.task]
    if len(set(names)) != len(names):
        raise ConfigError(f"--task names must be distinct, got {names}")
    metadata = read_bundle(args.task[0][1]).metadata if args.task else None
    base, _ = load_base(args, metadata)
    example = None
    if args.input_shape is not None:  # every task is run once on a zero sample when added
        example = (torch.zeros((1, *args.input_shape), dtype=getattr(torch, args.input_dtype)),)
    host = TaskHost(
        base,
        cache_size=None,
        cache_bytes=args.cache_bytes,
        trusted_keys=args.trusted_key,
        example_inputs=example,
    )
    for name, path in args.task:
        host.add_task(name, Path(path))
    release_free_memory()  # what loading and the dry runs freed
    logger.info("serving %d task(s) on http://%s:%d", len(names), args.host, args.port)
    uvicorn.run(
        create_app(host, settings),
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=args.graceful_timeout,
    )
    return 0
