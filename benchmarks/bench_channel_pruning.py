"""Channel pruning speed-up on CPU: spa (SPLoRA -> prune -> compact -> fuse) vs Torch-Pruning.

ResNet-50 with random weights, 3x112x112 inputs, batch 16, 2 threads. For each target density
(~30% and ~10% of the weights) it prints, side by side: parameters, MACs, CPU latency of the
pruned model and of the dense model, the realised speed-up and speed-up / MACs reduction. The
same is printed for Torch-Pruning's own `MagnitudePruner` on the same model, matched to the
same parameter count. Every model of one density is timed in the same rounds, in alternation
(9 rounds); speed-ups are medians of per-round ratios to the dense eager model, with min-max.
Run: `python benchmarks/bench_channel_pruning.py`.
"""

from __future__ import annotations

import copy

import torch
import torch_pruning
from _timing import interleaved_ratios, report_goal

import spa
from spa.deploy import optimize_for_inference
from spa.flops import count_flops, density
from spa.models import resnet50
from spa.pruning import apply_masks, channel_groups, compact, compute_masks, score

BATCH, SIZE, THREADS, ROUNDS = 16, 112, 2, 9


def ours(base: torch.nn.Module, x: torch.Tensor, target: float, round_to: int | None):
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=8))
    groups = channel_groups(model, x[:2])
    scores = score(model, "weight", groups)
    apply_masks(model, compute_masks(groups, scores, target, round_to=round_to))
    reached = density(model)
    compact(model)
    return spa.fuse(model).eval(), reached


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
    return best.eval()


def compare(models: dict[str, tuple[torch.nn.Module, bool]], x: torch.Tensor) -> dict:
    """Time every model (`channels_last` input where flagged) in the same interleaved rounds."""
    last = x.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        variants = {
            name: (lambda m=m, i=(last if cl else x): m(i)) for name, (m, cl) in models.items()
        }
        return interleaved_ratios(variants, "dense (eager)", rounds=ROUNDS, repeats=1, warmup=2)


def print_rows(models, timed, x, dense_flops) -> None:
    print(
        f"{'model':34s} {'params':>9s} {'MMACs':>10s} {'latency':>11s} {'speed-up':>18s} "
        f"{'MACs red.':>9s} {'ratio':>7s}"
    )
    for name, (model, _) in models.items():
        seconds, ratio, low, high = timed[name]  # per round: this model / dense eager
        flops = count_flops(model, x)
        speedup, reduction = 1 / ratio, dense_flops / flops
        params = sum(p.numel() for p in model.parameters())
        spread = f"{speedup:.2f}x ({1 / high:.2f}-{1 / low:.2f})"
        print(
            f"{name:34s} {params / 1e6:8.2f}M {flops / 2e6:10.0f} {seconds * 1e3:9.1f}ms "
            f"{spread:>18s} {reduction:8.2f}x {speedup / reduction:7.2f}"
        )


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    base = resnet50(num_classes=1000).eval()
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    dense_flops = count_flops(base, x)
    dense = {
        "dense (eager)": (base, False),
        "dense (BN folded, channels-last)": (optimize_for_inference(base), True),
    }
    print(f"resnet50, batch {BATCH}, 3x{SIZE}x{SIZE}, {THREADS} threads, {ROUNDS} rounds")
    for target in (0.3, 0.1):
        pruned, reached = ours(base, x, target, round_to=8)
        optimized = optimize_for_inference(pruned)
        with torch.no_grad():
            error = (optimized(x[:2]) - pruned(x[:2])).abs().max() / pruned(x[:2]).abs().max()
        parameters = sum(p.numel() for p in pruned.parameters())
        models = {
            **dense,
            "spa fused+compacted (eager)": (pruned, False),
            "spa + optimize_for_inference": (optimized, True),
            "torch-pruning MagnitudePruner": (torch_pruning_model(base, x, parameters), False),
        }
        timed = compare(models, x)
        print(f"--- target density {target:.0%}: spa reached {reached:.3f}")
        print_rows(models, timed, x, dense_flops)
        # Optimised spa vs optimised dense, per round: the ratio of the two ratios.
        relative = (
            timed["dense (BN folded, channels-last)"][1] / timed["spa + optimize_for_inference"][1]
        )
        print(f"  speed-up vs dense optimised {relative:.2f}x, max rel. output error {error:.1e}")
        report_goal(
            f"ResNet-50 {target:.0%} density, optimised spa vs optimised dense: speed-up",
            "-",
            f"{relative:.2f}",
            None,
        )


if __name__ == "__main__":
    main()
