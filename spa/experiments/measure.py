"""Measurements of a task model at one density: dParams, FLOPs/MACs, latency, bundle bytes."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spa.accounting import count_learned_parameters
from spa.deploy import fuse
from spa.experiments.structure import group_structure, layer_structure
from spa.flops import count_flops, density
from spa.pruning import compact
from spa.pruning.channel_group import ChannelGroup, refresh_groups
from spa.tasks import save_task

LATENCY_REPEATS = 20  # timed forward passes per measurement
LATENCY_WARMUP = 3  # untimed passes first (allocator, caches, lazy initialisation)


def freeze(model: nn.Module) -> nn.Module:
    """Freeze `model` in place (no gradients, eval mode) and return it: the bundles' base."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()


@dataclass(frozen=True)
class Latency:
    """Wall-clock milliseconds of one forward pass: the median of several timed runs and its
    spread (first and third quartile), so one disturbed run moves neither.

    Args:
        median_ms: median over the timed runs.
        q1_ms: first quartile (25th percentile, linear interpolation).
        q3_ms: third quartile (75th percentile, linear interpolation).
        runs: number of timed runs.
    """

    median_ms: float
    q1_ms: float
    q3_ms: float
    runs: int

    def record(self) -> dict[str, float | int]:
        """The metrics-record fields: `latency_ms` (the median) and its quartiles."""
        return {
            "latency_ms": self.median_ms,
            "latency_q1_ms": self.q1_ms,
            "latency_q3_ms": self.q3_ms,
            "latency_runs": self.runs,
        }


def latency_statistics(times_ms: Sequence[float]) -> Latency:
    """Median and quartiles of timed runs (the one latency statistic of every table).

    Args:
        times_ms: milliseconds of each timed run (at least one).

    Returns:
        The median and the first and third quartiles (inclusive linear interpolation, the
        same as `numpy.percentile`'s default).

    Raises:
        ValueError: if `times_ms` is empty.
    """
    if not times_ms:
        raise ValueError("latency_statistics needs at least one timed run")
    values = sorted(float(t) for t in times_ms)
    if len(values) == 1:
        return Latency(median_ms=values[0], q1_ms=values[0], q3_ms=values[0], runs=1)
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return Latency(median_ms=median, q1_ms=q1, q3_ms=q3, runs=len(values))


@torch.inference_mode()
def measure_latency(
    model: nn.Module,
    inputs: torch.Tensor | Mapping[str, torch.Tensor],
    repeats: int = LATENCY_REPEATS,
    warmup: int = LATENCY_WARMUP,
) -> Latency:
    """Time forward passes of `model` (eval mode) on `inputs`: `warmup` untimed, then `repeats`.

    Args:
        model: the model to time (its train/eval mode is restored afterwards).
        inputs: a batch tensor, or keyword inputs (e.g. `input_ids`) of a `transformers` model.
        repeats: timed runs (>= 1).
        warmup: untimed runs first.

    Returns:
        The median and quartiles of the timed runs (`latency_statistics`).
    """
    training = model.training
    model.eval()

    def forward() -> None:
        model(**inputs) if isinstance(inputs, Mapping) else model(inputs)

    for _ in range(warmup):
        forward()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        forward()
        times.append((time.perf_counter() - start) * 1e3)
    model.train(training)
    return latency_statistics(times)


def measure_task(
    model: nn.Module,
    base: nn.Module,
    example: torch.Tensor,
    bundle_path: Path | None,
    latency_batch_size: int = 1,
    model_name: str | None = None,
    model_options: dict[str, Any] | None = None,
    groups: Sequence[ChannelGroup] | None = None,
) -> dict[str, Any]:
    """Compact a copy of the masked task model, measure it and save its task bundle.

    Args:
        model: the trained, masked, adapted task model (left unchanged).
        base: the plain base model the task was adapted from.
        example: one input example `(1, ...)`.
        bundle_path: where the bundle goes (None: no bundle).
        latency_batch_size: batch size of the latency measurement.
        model_name: `spa.models` name recorded in the bundle metadata.
        model_options: the base's builder arguments, recorded in the bundle metadata.
        groups: the model's channel groups, for `structure` per group (else per layer).

    Returns:
        `density` (measured), `dparams`, `params` and `flops` / `macs` per example of the fused
        compacted model, the latency fields of `Latency.record`, `bundle_bytes` (None
        without a bundle) and `structure` (where the budget went, `spa.experiments.structure`).
    """
    training = model.training
    compacted = compact(copy.deepcopy(model).eval(), example)
    model.train(training)
    fused = fuse(compacted).eval()
    flops = count_flops(fused, example)
    batch = example.expand(latency_batch_size, *example.shape[1:]).contiguous()
    result: dict[str, Any] = {
        "density": density(compacted),
        "dparams": count_learned_parameters(compacted),
        "params": sum(p.numel() for p in fused.parameters()),
        "flops": flops,
        "macs": flops // 2,
        **measure_latency(fused, batch).record(),
        "bundle_bytes": None,
        "structure": (
            group_structure(refresh_groups(model, list(groups)))
            if groups
            else layer_structure(compacted, base)
        ),
    }
    if bundle_path is not None:
        bundle = save_task(
            compacted,
            bundle_path,
            base_model=base,
            model_name=model_name,
            model_options=model_options,
        )
        result["bundle_bytes"] = bundle.size_bytes
    return result
