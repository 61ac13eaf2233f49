"""Issue 2 benchmark: SPLoRA training step and adapted eval forward vs full fine-tuning.

resnet50 (random weights), batch 16, 3x112x112, 2 threads. Prints, measured side by side in one
run: training-step time (forward, backward, SGD step) of SPLoRA rank 8 and of BN+head-only
training, each divided by the full fine-tuning step; and the adapted model's eval forward divided
by the dense model's.

Run: .venv/bin/python benchmarks/bench_core.py [--rounds N]
"""

from __future__ import annotations

import argparse
import copy

import torch
from _timing import interleaved_ratios, report_goal
from torch import nn

import spa
from spa.adapters.inject import set_trainable
from spa.models.resnet import resnet50


def _train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9
    )
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    return step


def _eval_forward(model: nn.Module, x: torch.Tensor):
    def forward() -> None:
        with torch.no_grad():
            model(x)

    return forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds (>= 9)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 112, 112), torch.randint(0, 10, (16,))

    dense = resnet50(num_classes=10).train()
    splora = spa.adapt(copy.deepcopy(dense), spa.SPLoRAConfig(rank=8)).train()
    bn_head = copy.deepcopy(dense).train()
    set_trainable(bn_head, ("norm", "head"), ["fc"])

    train = interleaved_ratios(
        {
            "full fine-tuning": _train_step(dense, x, y),
            "SPLoRA r8": _train_step(splora, x, y),
            "BN + head only": _train_step(bn_head, x, y),
        },
        "full fine-tuning",
        rounds=args.rounds,
    )
    dense.eval()
    splora.eval()
    evaluation = interleaved_ratios(
        {"dense": _eval_forward(dense, x), "SPLoRA r8 (adapted)": _eval_forward(splora, x)},
        "dense",
        rounds=args.rounds,
    )
    print(
        f"resnet50, batch 16, 3x112x112, {args.threads} threads, {args.rounds} interleaved rounds"
    )
    print(f"{'training step':<28}{'seconds':>10}{'/ fine-tuning, median (min-max)':>34}")
    for name, (seconds, ratio, low, high) in train.items():
        print(f"{name:<28}{seconds:>10.3f}{ratio:>15.2f}x ({low:.2f}-{high:.2f})")
    print(f"{'eval forward':<28}{'seconds':>10}{'/ dense, median (min-max)':>34}")
    for name, (seconds, ratio, low, high) in evaluation.items():
        print(f"{name:<28}{seconds:>10.3f}{ratio:>15.2f}x ({low:.2f}-{high:.2f})")
    _, ratio, low, high = train["SPLoRA r8"]
    report_goal(
        "SPLoRA r8 train step / full fine-tuning (ResNet-50)",
        "<= 0.75",
        f"{ratio:.2f} ({low:.2f}-{high:.2f})",
        ratio <= 0.75,
    )
    _, floor, low, high = train["BN + head only"]
    report_goal("BN + head only (the floor)", "-", f"{floor:.2f} ({low:.2f}-{high:.2f})", None)
    _, ratio, low, high = evaluation["SPLoRA r8 (adapted)"]
    report_goal("adapted eval forward / dense", "~1.0", f"{ratio:.2f} ({low:.2f}-{high:.2f})", None)


if __name__ == "__main__":
    main()
