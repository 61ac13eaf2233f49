"""Channel pruning speed-up on CPU: spa (SPLoRA -> prune -> compact -> fuse) vs Torch-Pruning.

ResNet-50 with random weights, 3x112x112 inputs, batch 16, 2 threads. For each target density
(~30% and ~10% of the weights) it prints, side by side: parameters, MFLOPs, CPU latency of the
pruned model and of the dense model, the realised speed-up and speed-up / FLOPs reduction. The
same is printed for Torch-Pruning's own `MagnitudePruner` on the same model, matched to the
same parameter count. Run: `python benchmarks/bench_channel_pruning.py`.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch_pruning

import spa
from spa.deploy import optimize_for_inference
from spa.flops import count_flops, density
from spa.models import resnet50
from spa.pruning import apply_masks, channel_groups, compact, compute_masks, score

BATCH, SIZE, THREADS, REPEATS = 16, 112, 2, 3


def latency(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Median seconds per forward pass (after warm-up)."""
    model.eval()
    with torch.inference_mode():
        for _ in range(2):
            model(x)
        times = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def ours(base: torch.nn.Module, x: torch.Tensor, target: float, round_to: int | None):
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=8))
    groups = channel_groups(model, x[:2])
    scores = score(model, "weight", groups)
    apply_masks(model, compute_masks(groups, scores, target, round_to=round_to))
    reached = density(model)
    compact(model)
    return spa.fuse(model), reached


def torch_pruning_model(base: torch.nn.Module, x: torch.Tensor, parameters: int):
    """Torch-Pruning's own pruner, with the channel ratio bisected to match `parameters`."""
    low, high, best = 0.0, 0.95, None
    for _ in range(6):
        ratio = (low + high) / 2
        model = copy.deepcopy(base)
        pruner = torch_pruning.pruner.MagnitudePruner(
            model,
            x[:2],
            importance=torch_pruning.importance.MagnitudeImportance(p=2),
            pruning_ratio=ratio,
            ignored_layers=[model.fc],
        )
        pruner.step()
        count = sum(p.numel() for p in model.parameters())
        best = model
        if count > parameters:
            low = ratio
        else:
            high = ratio
    return best


def row(name, model, x, dense_flops, dense_latency, channels_last=False):
    inputs = x.to(memory_format=torch.channels_last) if channels_last else x
    flops = count_flops(model, x)
    seconds = latency(model, inputs)
    speedup, reduction = dense_latency / seconds, dense_flops / flops
    params = sum(p.numel() for p in model.parameters())
    print(
        f"{name:34s} {params / 1e6:8.2f}M {flops / 2e6:10.0f} {seconds * 1e3:9.1f}ms "
        f"{speedup:7.2f}x {reduction:8.2f}x {speedup / reduction:7.2f}"
    )


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    base = resnet50(num_classes=1000).eval()
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    dense_flops = count_flops(base, x)
    dense_latency = latency(base, x)
    dense_optimized = optimize_for_inference(base)
    dense_opt_latency = latency(dense_optimized, x.to(memory_format=torch.channels_last))
    print(f"resnet50, batch {BATCH}, 3x{SIZE}x{SIZE}, {THREADS} threads, median of {REPEATS}")
    print(
        f"{'model':34s} {'params':>9s} {'MMACs':>10s} {'latency':>11s} {'speedup':>8s} "
        f"{'MACs red.':>9s} {'ratio':>7s}"
    )
    row("dense (eager)", base, x, dense_flops, dense_latency)
    row("dense (BN folded, channels-last)", dense_optimized, x, dense_flops, dense_latency, True)
    for target in (0.3, 0.1):
        pruned, reached = ours(base, x, target, round_to=8)
        parameters = sum(p.numel() for p in pruned.parameters())
        print(f"--- target density {target:.0%}: spa reached {reached:.3f}")
        row("spa fused+compacted (eager)", pruned, x, dense_flops, dense_latency)
        optimized = optimize_for_inference(pruned)
        with torch.no_grad():
            error = (optimized(x[:2]) - pruned(x[:2])).abs().max() / pruned(x[:2]).abs().max()
        row("spa + optimize_for_inference", optimized, x, dense_flops, dense_latency, True)
        channels_last = x.to(memory_format=torch.channels_last)
        relative = dense_opt_latency / latency(optimized, channels_last)
        print(f"  speed-up vs dense optimised {relative:.2f}x, max rel. output error {error:.1e}")
        tp_model = torch_pruning_model(base, x, parameters)
        row("torch-pruning MagnitudePruner", tp_model, x, dense_flops, dense_latency)


if __name__ == "__main__":
    main()
