"""Run every benchmark in turn (`make bench`); each prints its own side-by-side ratios.

Benchmarks measure speed and memory on this machine; they are never unit tests. Run them on an
otherwise idle machine: other jobs on the same cores distort every ratio.

Run: .venv/bin/python benchmarks/run_all.py [NAME ...]   (names: core, channel_pruning,
cnn_families, transformers, splopa, task_switching, fuzz_bundles, flops_budget, serving,
streaming, large_model, training_memory, hostile_bundles, startup, quality; default all)

Benchmarks that check a goal print `GOAL|...` lines (see `_timing.report_goal`); the run ends
with one summary table of every goal: the target next to the measured median (min-max).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from _timing import GOAL_PREFIX

BENCHMARKS = {
    "core": ["bench_core.py"],
    "channel_pruning": ["bench_channel_pruning.py"],
    "cnn_families": ["bench_cnn_families.py"],
    "transformers": ["bench_transformers.py"],
    "splopa": ["bench_splopa.py"],
    "task_switching": ["bench_task_switching.py"],
    "fuzz_bundles": ["fuzz_bundles.py"],
    "flops_budget": ["bench_flops_budget.py"],
    "serving": ["bench_serving.py"],
    "streaming": ["bench_streaming.py"],
    "large_model": ["bench_large_model.py"],
    "training_memory": ["bench_training_memory.py"],
    "hostile_bundles": ["bench_hostile_bundles.py"],
    "startup": ["bench_startup.py"],
    "quality": ["bench_quality.py", "--quick"],  # the full table: make bench-quality
}


def main() -> int:
    names = sys.argv[1:] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    here = Path(__file__).parent
    # fuzz_bundles reuses the test suite's bundle mutations: put the repository root on the path.
    paths = [str(here.parent), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    failed, goals = [], []
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        script = str(here / BENCHMARKS[name][0])
        with subprocess.Popen(
            [sys.executable, script, *BENCHMARKS[name][1:]],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        ) as process:
            for line in process.stdout:
                if line.startswith(GOAL_PREFIX):
                    goals.append(line[len(GOAL_PREFIX) :].rstrip("\n").split("|"))
                else:
                    print(line, end="", flush=True)
        print(f"--- {name}: {time.perf_counter() - start:.0f} s, exit {process.returncode}")
        if process.returncode:
            failed.append(name)
    print(summary_table(goals, load))
    return 1 if failed else 0


def summary_table(goals: list[list[str]], load: float) -> str:
    """The collected goal lines as one Markdown table (goal, target, measured, verdict)."""
    lines = [
        f"\n## Summary (1-min load average at the start: {load:.2f}; ratios are medians of "
        "per-round ratios, min-max in brackets)\n",
        "| goal | target | measured | |",
        "|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(goal)} |" for goal in goals]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
