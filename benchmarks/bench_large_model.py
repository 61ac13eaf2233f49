"""A TinyLlama-1.1B-shaped bfloat16 model pruned end to end: peak memory per stage (issue 22).

Random weights from `LlamaConfig` (hidden 2048, 22 layers, 32 heads, 4 key/value heads,
intermediate 5632, vocabulary 32000), built directly in bfloat16 (no float32 copy). The task
model shares the base's weights (`spa.task_model`) and keeps no fused weight
(`spa.cache_fused_weights(..., False)`); SPLoRA r8, heads + FFN + hidden size to density 0.5
(local ranking, hidden size rounded to the heads), Taylor on 2 x 128 tokens, a task bundle,
then, once the base is no longer needed, compaction in place and `spa.save_pretrained`. A plan of
the same prune is made first on the meta device (`spa.plan`).

Each stage resets the process's peak resident set (Linux `/proc/self/clear_refs`) and prints its
wall time and peak RSS against the weight bytes; the goal is a peak of at most 1.3x the weights.
The script runs with glibc's `MALLOC_MMAP_THRESHOLD_` fixed (see `_with_returning_allocator`).
Run: `python benchmarks/bench_large_model.py [--layers N] [--quick]` (`--quick`: a 2-layer,
hidden-256 model with a 4000-token vocabulary, for a check in seconds).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from _timing import proc_status, report_goal

import spa
from spa.pruning import apply_masks, channel_groups, compute_masks, score

TINYLLAMA = {
    "hidden_size": 2048,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "intermediate_size": 5632,
    "vocab_size": 32000,
}
QUICK = {**TINYLLAMA, "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4}
QUICK.update(num_key_value_heads=2, intermediate_size=704, vocab_size=4000)
GOAL = 1.3
_GIB = 2**30


class Stages:
    """Times each stage and records its peak resident set (reset when the stage starts)."""

    def __init__(self, weight_bytes: int) -> None:
        self.weight_bytes = weight_bytes
        self.start = proc_status("VmRSS")  # the interpreter, torch and transformers
        self.rows: list[tuple[str, float, int]] = []

    def run(self, name: str, function):
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
        before = proc_status("VmRSS")
        start = time.perf_counter()
        result = function()
        seconds = time.perf_counter() - start
        peak = proc_status("VmHWM")
        self.rows.append((name, seconds, peak))
        ratio, above = peak / self.weight_bytes, (peak - self.start) / self.weight_bytes
        print(
            f"{name:<16} {seconds:8.1f} s   peak RSS {peak / _GIB:6.2f} GiB = {ratio:.2f}x the "
            f"weights ({above:.2f}x above the {self.start / _GIB:.2f} GiB at start; "
            f"{before / _GIB:.2f} GiB when the stage began)"
        )
        return result


def _with_returning_allocator() -> None:
    """Re-run this script with glibc's mmap threshold fixed at 1 MiB, unless it is set.

    glibc raises its threshold after large frees, after which tensors of up to 32 MiB come from
    heap arenas that are not returned to the system: the peak RSS of a long run then grows with
    fragmentation (0.6 GiB after Taylor scoring here) rather than with what is alive.
    """
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
        os.execve(sys.executable, [sys.executable, *sys.argv], environment)


def main() -> None:
    _with_returning_allocator()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small config, for a quick check")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default 22)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = dict(QUICK if args.quick else TINYLLAMA)
    if args.layers:
        sizes["num_hidden_layers"] = args.layers
    config = transformers.LlamaConfig(**sizes, tie_word_embeddings=False, rms_norm_eps=1e-5)
    print(f"load average {os.getloadavg()}; {args.threads} threads; {sizes}")
    with torch.device("meta"):
        shapes = transformers.LlamaForCausalLM(config)
    weight_bytes = sum(p.numel() for p in shapes.parameters()) * 2  # bfloat16
    print(f"weights: {weight_bytes / _GIB:.2f} GiB in bfloat16; goal: peak <= {GOAL}x")
    stages = Stages(weight_bytes)
    units, round_to = ("heads", "ffn", "hidden"), {"hidden": config.num_attention_heads}
    found = stages.run(
        "plan (meta)", lambda: spa.plan(shapes, units=units, density=0.5, round_to=round_to)
    )
    print(found.summary())
    torch.manual_seed(0)
    base = stages.run(
        "build bf16",
        lambda: transformers.LlamaForCausalLM._from_config(config, dtype=torch.bfloat16).eval(),
    )

    def adapt():
        task = spa.task_model(base, spa.SPLoRAConfig(rank=8, trainable=("norm",)))
        return spa.cache_fused_weights(task, False)

    task = stages.run("adapt (shared)", adapt)
    groups = stages.run("groups", lambda: channel_groups(task, None, units=units))
    ids = torch.randint(0, config.vocab_size, (2, 129))
    data = [(ids[:, :-1], ids[:, 1:])]  # 2 x 128 tokens, next-token targets
    scores = stages.run("taylor 2x128", lambda: score(task, "taylor", groups, data=data))

    def mask():
        masks = compute_masks(groups, scores, density=0.5, ranking="local", round_to=round_to)
        apply_masks(task, masks)

    stages.run("masks", mask)
    # Groups and scores are not needed once the masks are applied; their per-channel Python
    # tuples (about 0.1 GiB at this size) would otherwise stay alive through every later stage.
    groups = scores = None
    with tempfile.TemporaryDirectory() as directory:
        bundle = Path(directory) / "task.safetensors"
        # spa.compacted_for_save compacts a copy whose frozen base weights are placeholders:
        # the base plus the trained tensors, no kept base weights.
        for_save = lambda: spa.compacted_for_save(task, base)  # noqa: E731
        stages.run("bundle", lambda: spa.save_task(for_save(), bundle, base_model=base))
        print(f"bundle: {bundle.stat().st_size / 2**20:.1f} MiB")
        base = None  # from here on the task model alone: compaction frees each base weight
        stages.run("compact", lambda: spa.compact(task))
        stages.run("save_pretrained", lambda: spa.save_pretrained(task, Path(directory) / "hf"))
        exported = sum(f.stat().st_size for f in (Path(directory) / "hf").iterdir())
        print(f"exported directory: {exported / _GIB:.2f} GiB")
    worst = max(stages.rows, key=lambda row: row[2])
    ratio = worst[2] / weight_bytes
    report_goal(
        "1.1B bf16 prune: peak RSS / weight bytes (worst stage)",
        f"<= {GOAL}",
        f"{ratio:.2f} ({worst[0]})",
        ratio <= GOAL,
    )
    for name, seconds, peak in stages.rows:
        measured = f"{peak / weight_bytes:.2f}x, {seconds:.0f} s"
        report_goal(f"1.1B bf16 stage {name}", "-", measured, None)


if __name__ == "__main__":
    main()
