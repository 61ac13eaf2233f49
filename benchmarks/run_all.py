"""Run every benchmark in turn (`make bench`); each prints its own side-by-side ratios.

Benchmarks measure speed and memory on this machine; they are never unit tests. Run them on an
otherwise idle machine: other jobs on the same cores distort every ratio.

Run: .venv/bin/python benchmarks/run_all.py [NAME ...]   (names: core, channel_pruning, splopa,
task_switching, flops_budget; default all)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = {
    "core": ["bench_core.py"],
    "channel_pruning": ["bench_channel_pruning.py"],
    "splopa": ["bench_splopa.py"],
    "task_switching": ["bench_task_switching.py"],
    "flops_budget": ["bench_flops_budget.py"],
}


def main() -> int:
    names = sys.argv[1:] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    here = Path(__file__).parent
    failed = []
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        result = subprocess.run([sys.executable, str(here / BENCHMARKS[name][0])], check=False)
        print(f"--- {name}: {time.perf_counter() - start:.0f} s, exit {result.returncode}")
        if result.returncode:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
