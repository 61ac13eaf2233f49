"""Start-up cost of the `spa` command: `spa --help` and an argument error, next to a bare Python.

Every CLI call used to pay 4-8 s of imports (torch, transformers) before argparse ran; the goal
is `spa --help` and argument errors in <= 1 s. Each command runs as a fresh process, the three
timed in alternation for `--rounds` rounds (median, min-max); `python -c pass` is the floor.

Run: `PYTHONPATH=. python benchmarks/bench_startup.py [--rounds 9]`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from _timing import report_goal

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "spa --help": [sys.executable, "-m", "spa", "--help"],
    "spa nonsense (argument error)": [sys.executable, "-m", "spa", "nonsense"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.rounds):
        for name, command in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(command, capture_output=True, check=False)
            times[name].append(time.perf_counter() - start)
    ok = True
    for name, samples in times.items():
        median = statistics.median(samples)
        spread = f"{median:.3f} s ({min(samples):.3f}-{max(samples):.3f})"
        print(f"{name:<32} {spread}")
        if name.startswith("spa"):
            ok &= median <= 1.0
            report_goal(f"startup: {name}", "<= 1 s", spread, median <= 1.0)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
