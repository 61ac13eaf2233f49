"""`spa prune-shards`: prune a sharded `transformers` model block by block (no full load)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `prune-shards` sub-command.

    Args:
        subparsers: the `spa` parser's sub-parsers.
    """
    parser = subparsers.add_parser(
        "prune-shards",
        help="prune a transformers model directory one decoder block at a time",
        description="Load one decoder block at a time from a transformers directory with "
        "(sharded) safetensors, score it on calibration tokens, remove attention heads and FFN "
        "neurons (the same fraction in every block) and write a transformers directory; a "
        "model larger than free memory can be pruned (see spa.tasks.streaming.prune_shards).",
    )
    parser.add_argument("source", type=Path, help="transformers model directory")
    parser.add_argument("-o", "--output", type=Path, required=True, help="directory to write")
    parser.add_argument("--density", type=float, required=True, help="fraction of weights kept")
    parser.add_argument("--criterion", default="activation", help="a per-block criterion")
    parser.add_argument("--units", nargs="+", default=["heads", "ffn"], choices=["heads", "ffn"])
    calibration = parser.add_mutually_exclusive_group(required=True)
    calibration.add_argument("--text", type=Path, help="calibration text (UTF-8 file)")
    calibration.add_argument(
        "--random-tokens", action="store_true", help="random calibration tokens (smoke tests)"
    )
    parser.add_argument("--batches", type=int, default=2, help="calibration batches")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per batch")
    parser.add_argument(
        "--max-shard-mb", type=int, default=512, help="output shard size in MB (default 512)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from spa.tasks.streaming import calibration_batches, prune_shards

    data = calibration_batches(args.source, args.text, args.batches, args.tokens)
    report = prune_shards(
        args.source,
        args.output,
        data,
        args.density,
        criterion=args.criterion,
        units=tuple(args.units),
        max_shard_bytes=args.max_shard_mb * 2**20,
        overwrite=args.overwrite,
    )
    counts = ", ".join(f"{key}={value}" for key, value in report.config.items())
    times = ", ".join(f"{stage} {seconds:.1f}s" for stage, seconds in report.seconds.items())
    print(f"wrote {report.destination}: {report.blocks} blocks, {counts}")
    print(f"stages: {times}")
    return 0
