"""Streaming prune of a Llama-3-8B-shaped bf16 model from sharded safetensors (issue 22).

The benchmark writes a random-weight bf16 model once, block by block (never the whole model in
memory), as sharded safetensors into a cache directory, then prunes it to 50% of the blocks'
weights with `spa.tasks.streaming.prune_shards` and the activation-aware criterion (Wanda-sp)
on 2 x 128 random calibration tokens. Each stage runs in its own process, which reports its
peak RSS (`ru_maxrss`) and wall time; the goal is a streaming peak RSS of at most 6 GB for the
8B shape (16 GB of weights).

Side by side, Torch-Pruning's LLM example flow (`examples/LLMs/prune_llm.py`: load the whole
model with `from_pretrained`, `MetaPruner` with `GroupNormImportance`, heads + FFN + hidden
size at one ratio, `save_pretrained`) runs on the same directory where the whole model fits in
memory (`--small`); for the 8B shape it is not run: it needs the 16 GB of weights in memory
before pruning starts, plus the pruner's copies, on a 24 GB machine shared with other jobs.
Memory figures are single runs (peak RSS is not a speed ratio); wall times depend on the load
printed with them.

Run: .venv/bin/python benchmarks/bench_streaming.py [--small] [--layers N] [--keep] [--cache DIR]
(--layers N: N blocks of the same shape; the peak RSS is reached per block, so N = 4 measures
the 8B shape's peak with a quarter of the disk and time.)
The 8B shape needs about 25 GB of free disk in the cache's file system (source + output); its
cache is deleted at the end unless --keep. --small (a 0.17B model of the same proportions)
takes about a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import report_goal
from _torch_pruning import llama_heads, rope_hidden

SHAPES = {
    "llama3-8b": dict(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        vocab_size=128256,
    ),
    "small": dict(
        hidden_size=1024,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=4,
        intermediate_size=3584,
        vocab_size=32000,
    ),
}
GOAL_GB = 6.0
DENSITY = 0.5
MARKER = "spa-bench-complete"
TP_S = 300  # wall-time limit of the Torch-Pruning stage


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _config(shape: str, layers: int | None = None):
    import transformers

    sizes = dict(SHAPES[shape])
    if layers:
        sizes["num_hidden_layers"] = layers
    return transformers.LlamaConfig(
        **sizes,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
        bos_token_id=0,
        eos_token_id=0,
    )


def write_model(shape: str, directory: Path, layers: int | None = None) -> None:
    """Write random bf16 weights tensor by tensor (the writer holds at most one shard)."""
    import torch
    import transformers

    from spa.tasks.shards import ShardWriter

    start = time.perf_counter()
    config = _config(shape, layers)
    with torch.device("meta"):
        skeleton = transformers.LlamaForCausalLM(config)
    temporary = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    config.save_pretrained(temporary)
    writer = ShardWriter(temporary, max_shard_bytes=2**30)
    generator = torch.Generator().manual_seed(0)
    for key, meta in skeleton.state_dict().items():
        if key.endswith("norm.weight"):
            tensor = torch.ones(meta.shape, dtype=torch.bfloat16)
        else:
            tensor = torch.empty(meta.shape, dtype=torch.bfloat16)
            tensor.normal_(0, 0.02, generator=generator)
        writer.add({key: tensor})
    writer.close()
    (temporary / MARKER).write_text(json.dumps({"bytes": writer.total_bytes}))
    os.replace(temporary, directory)
    print(
        f"write: {writer.total_bytes / 1e9:.2f} GB of bf16 weights in "
        f"{time.perf_counter() - start:.0f} s, peak RSS {_peak_gb():.2f} GB"
    )


def stream(directory: Path, output: Path) -> None:
    """`prune_shards` with the activation criterion; stage times and peak RSS."""
    from spa.tasks.streaming import calibration_batches, prune_shards

    start = time.perf_counter()
    data = calibration_batches(directory, None, batches=2, tokens=128)
    report = prune_shards(directory, output, data, DENSITY)
    total = time.perf_counter() - start
    peak = _peak_gb()
    stages = ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in report.seconds.items())
    print(
        f"spa streaming: {total:.0f} s ({stages} s), peak RSS {peak:.2f} GB, kept {report.config}"
    )
    print(f"spa streaming: wrote {report.bytes_written / 1e9:.2f} GB")
    weights = json.loads((directory / MARKER).read_text())["bytes"] / 1e9
    print(f"spa streaming: peak RSS / weight bytes = {peak / weights:.2f}")
    if weights > 3:  # the 8B shape (also with fewer blocks: the peak is per block)
        report_goal("streaming 8B peak RSS", f"<= {GOAL_GB} GB", f"{peak:.2f} GB", peak <= GOAL_GB)


def torch_pruning(directory: Path, output: Path) -> None:
    """Torch-Pruning's `examples/LLMs/prune_llm.py` flow on the CPU, in memory."""
    import torch
    import torch_pruning as tp
    import transformers

    start = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16)
    model.eval()
    loaded = time.perf_counter()
    peak = _peak_gb()
    print(f"Torch-Pruning: loaded in {loaded - start:.1f} s, peak RSS {peak:.2f} GB", flush=True)
    config = model.config
    # The example's GroupNormImportance is GroupMagnitudeImportance in Torch-Pruning 1.6.
    importance = getattr(tp.importance, "GroupNormImportance", None)
    importance = importance or tp.importance.GroupMagnitudeImportance
    num_heads = llama_heads(model)
    with rope_hidden():  # its tracer loops on rope otherwise (see _torch_pruning)
        pruner = tp.pruner.MetaPruner(
            model,
            example_inputs=torch.randint(0, config.vocab_size, (1, 8)),
            importance=importance(p=2, group_reduction="mean"),
            global_pruning=False,
            pruning_ratio=1 - DENSITY,
            ignored_layers=[model.lm_head],
            num_heads=num_heads,
            prune_num_heads=True,
            prune_head_dims=False,
            head_pruning_ratio=1 - DENSITY,
            round_to=4,
            output_transform=lambda output: output.logits,  # a ModelOutput in transformers 5
        )
        print(f"Torch-Pruning: graph built in {time.perf_counter() - loaded:.1f} s", flush=True)
        for group in pruner.step(interactive=True):
            group.prune()
    pruned = time.perf_counter()
    model.save_pretrained(output)
    print(
        f"Torch-Pruning (in memory): {time.perf_counter() - start:.0f} s (load "
        f"{loaded - start:.1f}, prune {pruned - loaded:.1f}, save "
        f"{time.perf_counter() - pruned:.1f} s), peak RSS {_peak_gb():.2f} GB, "
        f"{sum(p.numel() for p in model.parameters()) / 1e9:.3f} B parameters left "
        "(heads, FFN and hidden size at one ratio)"
    )


def _child(stage: str, shape: str, layers: int | None, *paths: Path, timeout=None) -> int:
    command = [sys.executable, __file__, "--stage", stage, "--shape", shape, *map(str, paths)]
    command += ["--layers", str(layers)] if layers else []
    try:
        return subprocess.run(command, check=False, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        print(f"{stage}: did not finish within {timeout} s; stopped")
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a 0.17B model of the same shape")
    parser.add_argument("--keep", action="store_true", help="keep the 8B cache directory")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument(
        "--layers", type=int, help="fewer blocks of the same shape (the peak is per block)"
    )
    parser.add_argument(
        "--stage", choices=("write", "stream", "torch_pruning"), help=argparse.SUPPRESS
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage == "write":
        write_model(args.shape, *args.paths, layers=args.layers)
    elif args.stage:
        (stream if args.stage == "stream" else torch_pruning)(*args.paths)
    if args.stage:
        return 0
    shape = "small" if args.small else "llama3-8b"
    suffix = f"-{args.layers}-layers" if args.layers else ""
    source = args.cache / f"spa-bench-streaming-{shape}{suffix}"
    sizes = {**SHAPES[shape], **({"num_hidden_layers": args.layers} if args.layers else {})}
    load = os.getloadavg()
    print(f"{shape}: {sizes}, bf16; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    free = shutil.disk_usage(args.cache).free / 1e9
    needed = (
        (26 if shape == "llama3-8b" else 1)
        * sizes["num_hidden_layers"]
        / SHAPES[shape]["num_hidden_layers"]
    )
    if not (source / MARKER).is_file() and free < needed:
        print(f"skipped: {free:.0f} GB free in {args.cache}, the {shape} run needs {needed} GB")
        return 0
    outputs = [Path(tempfile.mkdtemp(dir=args.cache, prefix="spa-bench-out-")) for _ in range(2)]
    failed = 0
    try:
        if not (source / MARKER).is_file():
            failed |= _child("write", shape, args.layers, source)
        failed |= _child("stream", shape, args.layers, source, outputs[0] / "spa")
        if shape == "small":
            # Torch-Pruning 1.6's tracer loops on transformers 5's rope unless it is hidden
            # while the graph is built and pruned (`_torch_pruning.rope_hidden`).
            tp_output = outputs[1] / "tp"
            failed |= _child("torch_pruning", shape, args.layers, source, tp_output, timeout=TP_S)
        else:
            print(
                "Torch-Pruning (in memory): not run. Its LLM example loads the whole model "
                "(16.1 GB of bf16 weights) before pruning and keeps the dependency graph and the "
                "pruned copies of each layer beside it: more than this 24 GB machine, shared "
                "with other jobs, can give. Its flow runs side by side on the --small shape."
            )
    finally:
        for output in outputs:
            shutil.rmtree(output, ignore_errors=True)
        if (shape != "small" or args.layers) and not args.keep:
            shutil.rmtree(source, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
