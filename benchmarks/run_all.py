"""Run every benchmark in turn (`make bench`); each prints its own side-by-side ratios.

Benchmarks measure speed and memory on this machine; they are never unit tests. Run them on an
otherwise idle machine: other jobs on the same cores distort every ratio.

Run: .venv/bin/python benchmarks/run_all.py [NAME ...]   (names: core, channel_pruning,
cnn_families, splopa, task_switching, fuzz_bundles, flops_budget; default all)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = {
    "core": ["bench_core.py"],
    "channel_pruning": ["bench_channel_pruning.py"],
    "cnn_families": ["bench_cnn_families.py"],
    "splopa": ["bench_splopa.py"],
    "task_switching": ["bench_task_switching.py"],
    "fuzz_bundles": ["fuzz_bundles.py"],
    "flops_budget": ["bench_flops_budget.py"],
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
    failed = []
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        script = str(here / BENCHMARKS[name][0])
        result = subprocess.run([sys.executable, script], check=False, env=env)
        print(f"--- {name}: {time.perf_counter() - start:.0f} s, exit {result.returncode}")
        if result.returncode:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
