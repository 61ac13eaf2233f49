"""Shared benchmark helpers: interleaved rounds, median of per-round times, process memory."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path


def _interleaved_samples(
    variants: dict[str, Callable[[], object]], rounds: int, repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per call of each variant in every round, the variants timed in alternation."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            samples[name].append((time.perf_counter() - start) / repeats)
    return samples


def interleaved_medians(
    variants: dict[str, Callable[[], object]], rounds: int = 5, repeats: int = 2, warmup: int = 1
) -> dict[str, float]:
    """Median seconds per call of each variant, timing them in alternation.

    Alternating the variants within every round spreads machine noise evenly over them, so the
    ratios between variants are more trustworthy than their absolute times.
    """
    samples = _interleaved_samples(variants, rounds, repeats, warmup)
    return {name: statistics.median(times) for name, times in samples.items()}


def interleaved_ratios(
    variants: dict[str, Callable[[], object]],
    reference: str,
    rounds: int = 9,
    repeats: int = 2,
    warmup: int = 1,
) -> dict[str, tuple[float, float, float, float]]:
    """Per variant: (median seconds, median, min and max of per-round ratios to `reference`).

    Every round times each variant once (in alternation), and the ratio to the reference is
    taken within the round, so slow phases of the machine cancel out of the ratios.
    """
    samples = _interleaved_samples(variants, rounds, repeats, warmup)
    result = {}
    for name, times in samples.items():
        ratios = [t / r for t, r in zip(times, samples[reference])]
        result[name] = (
            statistics.median(times),
            statistics.median(ratios),
            min(ratios),
            max(ratios),
        )
    return result


GOAL_PREFIX = "GOAL|"


def report_goal(goal: str, target: str, measured: str, met: bool | None) -> None:
    """Print one goal line that `run_all.py` collects into its summary table.

    Args:
        goal: what is measured, e.g. "SPLoRA r8 train step / fine-tuning".
        target: the goal, e.g. "<= 0.75".
        measured: the figure with its spread, e.g. "0.84 (0.80-0.86)".
        met: whether the median meets the target (None: informational, no target).
    """
    verdict = "-" if met is None else ("met" if met else "missed")
    print(f"{GOAL_PREFIX}{goal}|{target}|{measured}|{verdict}", flush=True)


def proc_status(field: str) -> int:
    """A `/proc/self/status` memory field (`VmRSS`, `VmHWM`, ...) in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")
