"""Channel pruning of MobileNetV2 and a ConvNeXt-tiny-sized model on CPU (issue 11).

Random weights (`transformers` config classes, no download). Each model is adapted with SPLoRA,
pruned to 30% of its prunable weights by the weight criterion (global ranking, widths rounded to
multiples of 8), compacted and fused. The dense and the pruned model get the same inference
optimisation (BatchNorm folding where `torch.fx` can trace the model, channels-last always), and
are timed back to back in 9 interleaved rounds; the table gives, side by side, the MACs
reduction and the latency speed-up (median of the per-round ratios, with min-max).

Run: `python benchmarks/bench_cnn_families.py`.
"""

from __future__ import annotations

import copy
import functools

import torch
import transformers
from _timing import interleaved_ratios

import spa
from spa.deploy import optimize_for_inference
from spa.flops import count_macs
from spa.pruning import apply_masks, channel_groups, compact, compute_masks, score

THREADS, ROUNDS, DENSITY = 2, 9, 0.3


def mobilenet_v2() -> torch.nn.Module:
    config = transformers.MobileNetV2Config(image_size=224, tf_padding=True, num_labels=1000)
    return transformers.MobileNetV2ForImageClassification(config)


def convnext_tiny() -> torch.nn.Module:
    config = transformers.ConvNextConfig(
        hidden_sizes=[96, 192, 384, 768], depths=[3, 3, 9, 3], num_labels=1000
    )
    return transformers.ConvNextForImageClassification(config)


MODELS = {  # name -> (builder, batch, image size)
    "MobileNetV2 (1.0, tf_padding)": (mobilenet_v2, 8, 224),
    "ConvNeXt-tiny-sized": (convnext_tiny, 2, 160),
}


def optimise(model: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """The inference optimisation applied to both the dense and the pruned model."""
    try:
        return optimize_for_inference(model), "BN folded + channels-last"
    except Exception:  # noqa: BLE001 - torch.fx cannot trace every transformers model
        return optimize_for_inference(model, fold_norms=False), "channels-last"


def prune(base: torch.nn.Module, x: torch.Tensor) -> tuple[torch.nn.Module, float]:
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=8))
    groups = channel_groups(model, x[:1])
    scores = score(model, "weight", groups)
    apply_masks(model, compute_masks(groups, scores, DENSITY, round_to=8))
    reached = spa.density(model)
    compact(model)
    return spa.fuse(model).eval(), reached


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    print(f"{THREADS} threads, {ROUNDS} interleaved rounds, target density {DENSITY:.0%}")
    print(
        f"{'model':30s} {'density':>8s} {'params':>15s} {'GMACs':>13s} {'MACs red.':>9s} "
        f"{'speed-up (median, min-max)':>27s}  optimisation"
    )
    for name, (builder, batch, size) in MODELS.items():
        base = builder().eval()
        x = torch.randn(batch, 3, size, size)
        pruned, reached = prune(base, x)
        dense_macs, pruned_macs = count_macs(base, x), count_macs(pruned, x)
        dense_opt, how = optimise(base)
        pruned_opt, how_pruned = optimise(pruned)
        assert how == how_pruned, (how, how_pruned)
        inputs = x.to(memory_format=torch.channels_last)
        with torch.inference_mode():
            reference = pruned(x).logits
            error = (pruned_opt(inputs).logits - reference).abs().max() / reference.abs().max()
        with torch.inference_mode():
            timings = interleaved_ratios(
                {
                    "dense": functools.partial(dense_opt, inputs),
                    "pruned": functools.partial(pruned_opt, inputs),
                },
                "pruned",
                rounds=ROUNDS,
                repeats=1,
            )
        _, speedup, low, high = timings["dense"]  # dense seconds / pruned seconds per round
        params = f"{sum(p.numel() for p in base.parameters()) / 1e6:.1f}->" + (
            f"{sum(p.numel() for p in pruned.parameters()) / 1e6:.1f}M"
        )
        speed = f"{speedup:.2f}x ({low:.2f}-{high:.2f})"
        print(
            f"{name:30s} {reached:8.3f} {params:>15s} "
            f"{dense_macs / 1e9:5.2f}->{pruned_macs / 1e9:5.2f} {dense_macs / pruned_macs:8.2f}x "
            f"{speed:>27s}  {how}, batch {batch}, 3x{size}x{size}, optimised vs fused "
            f"max rel. error {error:.1e}"
        )


if __name__ == "__main__":
    main()
