"""Pruning to a FLOPs budget: spa vs Torch-Pruning at equal MACs (issue 15, goal 4).

ResNet-50 with random weights, 3x112x112 inputs, batch 16, 2 threads. For 50% and 25% of the
dense model's MACs, spa prunes with `ChannelPruningConfig(target="flops")`-style masks
(`compute_masks(..., macs=profile)`, weight criterion, widths rounded to 8), compacts and fuses;
Torch-Pruning's `MagnitudePruner` is bisected to the same MACs. Both get the same inference
optimisation (BatchNorm folded, channels-last). Latencies are timed in interleaved rounds and
the spa/Torch-Pruning ratio is the median of per-round ratios (min-max printed).
Run: `python benchmarks/bench_flops_budget.py [--rounds 9]`.
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch_pruning
from _timing import interleaved_ratios, report_goal

import spa
from spa.deploy import optimize_for_inference
from spa.flops import count_macs
from spa.models import resnet50
from spa.pruning import apply_masks, channel_groups, compact, compute_masks, score
from spa.pruning.budget import flops_profile

BATCH, SIZE, THREADS = 16, 112, 2


def spa_model(base: torch.nn.Module, x: torch.Tensor, fraction: float) -> torch.nn.Module:
    """spa: SPLoRA-adapted, masked to `fraction` of the dense MACs, compacted and fused."""
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=8))
    groups = channel_groups(model, x[:2])
    profile = flops_profile(model, groups, x[:2])
    scores = score(model, "weight", groups)
    masks = compute_masks(groups, scores, fraction, round_to=8, macs=profile)
    apply_masks(model, masks)
    compact(model)
    return spa.fuse(model)


def torch_pruning_model(base: torch.nn.Module, x: torch.Tensor, macs: int) -> torch.nn.Module:
    """Torch-Pruning's MagnitudePruner with its ratio bisected to match `macs`."""
    low, high, best = 0.0, 0.95, None
    for _ in range(8):
        ratio = (low + high) / 2
        model = copy.deepcopy(base)
        torch_pruning.pruner.MagnitudePruner(
            model,
            x[:2],
            importance=torch_pruning.importance.MagnitudeImportance(p=2),
            pruning_ratio=ratio,
            ignored_layers=[model.fc],
            round_to=8,
        ).step()
        count = count_macs(model, x[:2])
        if best is None or abs(count - macs) < abs(best[0] - macs):
            best = (count, model)
        if count > macs:
            low = ratio
        else:
            high = ratio
    return best[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds (>= 9)")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    base = resnet50(num_classes=1000).eval()
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    inputs = x.to(memory_format=torch.channels_last)
    dense_macs = count_macs(base, x[:2])
    dense = optimize_for_inference(base)
    print(f"resnet50, batch {BATCH}, 3x{SIZE}x{SIZE}, {THREADS} threads, {args.rounds} rounds")
    print(
        f"{'target':>7s} {'model':16s} {'MACs':>7s} {'params':>8s} {'latency':>9s} "
        f"{'vs TP (median, min-max)':>26s} {'speed-up vs dense':>18s}"
    )
    for fraction in (0.5, 0.25):
        ours = optimize_for_inference(spa_model(base, x, fraction))
        theirs_plain = torch_pruning_model(base, x, count_macs(spa_model(base, x, fraction), x[:2]))
        theirs = optimize_for_inference(theirs_plain)
        models = {"dense": dense, "spa": ours, "torch-pruning": theirs}
        with torch.inference_mode():
            variants = {name: (lambda m=m: m(inputs)) for name, m in models.items()}
            vs_tp = interleaved_ratios(variants, "torch-pruning", rounds=args.rounds)
            vs_dense = interleaved_ratios(variants, "dense", rounds=args.rounds)
        for name, model in models.items():
            macs = count_macs(model, x[:2]) / dense_macs
            params = sum(p.numel() for p in model.parameters()) / 1e6
            seconds, ratio, low, high = vs_tp[name]
            _, dense_ratio, dense_low, dense_high = vs_dense[name]
            print(
                f"{fraction:7.0%} {name:16s} {macs:7.1%} {params:7.2f}M {seconds * 1e3:7.1f}ms "
                f"{ratio:10.2f}x ({low:.2f}-{high:.2f}) {1 / dense_ratio:10.2f}x "
                f"({1 / dense_high:.2f}-{1 / dense_low:.2f})"
            )
        _, ratio, low, high = vs_tp["spa"]
        report_goal(
            f"spa / Torch-Pruning latency at {fraction:.0%} of dense MACs (ResNet-50)",
            "<= 1.0",
            f"{ratio:.2f} ({low:.2f}-{high:.2f})",
            ratio <= 1.0,
        )


if __name__ == "__main__":
    main()
