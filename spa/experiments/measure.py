"""Measurements of a task model at one density: dParams, FLOPs/MACs, latency, bundle bytes."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spa.accounting import count_learned_parameters
from spa.export import fuse
from spa.flops import count_flops, density
from spa.pruning import compact
from spa.tasks import save_task


def freeze(model: nn.Module) -> nn.Module:
    """Freeze `model` in place (no gradients, eval mode) and return it: the bundles' base."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()


@torch.inference_mode()
def latency_ms(model: nn.Module, inputs: torch.Tensor, repeats: int = 10, warmup: int = 2) -> float:
    """Fastest wall-clock milliseconds of one forward pass of `model` on `inputs` (eval mode).

    The minimum over repeats is the least disturbed by other processes sharing the CPU.

    Args:
        model: the model to time.
        inputs: the batch.
        repeats: timed runs.
        warmup: untimed runs first.

    Returns:
        The fastest time in milliseconds.
    """
    training = model.training
    model.eval()
    for _ in range(warmup):
        model(inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(inputs)
        times.append((time.perf_counter() - start) * 1e3)
    model.train(training)
    return min(times)


def measure_task(
    model: nn.Module,
    base: nn.Module,
    example: torch.Tensor,
    bundle_path: Path | None,
    latency_batch_size: int = 1,
    model_name: str | None = None,
    model_options: dict[str, Any] | None = None,
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

    Returns:
        `density` (measured), `dparams`, `params` and `flops` / `macs` per example of the fused
        compacted model, `latency_ms` and `bundle_bytes` (None without a bundle).
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
        "latency_ms": latency_ms(fused, batch),
        "bundle_bytes": None,
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
