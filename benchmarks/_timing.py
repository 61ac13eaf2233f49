"""Shared timing helper for benchmarks: interleaved rounds, median of per-round times."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_medians(
    variants: dict[str, Callable[[], object]], rounds: int = 5, repeats: int = 2, warmup: int = 1
) -> dict[str, float]:
    """Median seconds per call of each variant, timing them in alternation.

    Alternating the variants within every round spreads machine noise evenly over them, so the
    ratios between variants are more trustworthy than their absolute times.
    """
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
    return {name: statistics.median(times) for name, times in samples.items()}


def interleaved_ratios(
    reference: Callable[[], object],
    candidate: Callable[[], object],
    rounds: int = 9,
    repeats: int = 1,
    warmup: int = 1,
) -> list[float]:
    """Per round, `reference` seconds / `candidate` seconds, the two timed back to back.

    A ratio from one round compares the two under the same machine load; report the median of
    the rounds with their min-max.
    """
    for fn in (reference, candidate):
        for _ in range(warmup):
            fn()
    ratios = []
    for _ in range(rounds):
        seconds = []
        for fn in (reference, candidate):
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            seconds.append((time.perf_counter() - start) / repeats)
        ratios.append(seconds[0] / seconds[1])
    return ratios
