"""Recovery quality against the peers (issue 25 item 5): accuracy at equal kept MACs.

A width-8 ResNet-18 is pretrained on scikit-learn's digits (10 classes, 1,200 images: more data
than the target) and transferred to a smaller target task (digit mod 3 on 300 images, evaluated
on the other 297). Per seed, every method fine-tunes the unpruned model for `E0` epochs, prunes
once to keep a fraction of the dense model's MACs (spa: `target="flops"`, Taylor criterion) and
recovers for `E` epochs:

- spa fine-pruning (plain global ranking, MACs-normalised ranking `cost="macs"`, and local
  ranking: the same fraction of every layer, as Torch-Pruning's default),
- spa SPLoRA r8, with distillation from the unpruned model (KL, T=2, weight 0.5), and with
  ranks allocated from r16 to an average of 8 (`spa.recovery`) plus distillation,
- Torch-Pruning's Taylor importance (`MetaPruner`, its ratio bisected) + fine-tuning of all
  weights, matched once to spa fine-pruning's kept MACs and once to its kept parameters.

Printed per method: accuracy mean ± std over seeds, kept MMACs and parameters of the deployed
model, and the bytes stored per task (spa: the task bundle; Torch-Pruning: its float32
state dict). Quality numbers do not depend on the machine's load; the wall time does.
`--lm` adds the tiny Llama of `spa demo lm` (perplexity; spa methods only, through `spa run`).
Run: `python benchmarks/bench_quality.py [--quick] [--lm] [--seeds 3]`.
"""

from __future__ import annotations

import argparse
import copy
import io
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch_pruning
from sklearn.datasets import load_digits
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
    source_epochs: int = 15
    initial_epochs: int = 4
    recovery_epochs: int = 10
    fraction: float = 0.3  # of the dense MACs kept
    seeds: int = 3
    batch: int = 32


QUICK = Settings(size=8, source_epochs=8, initial_epochs=2, recovery_epochs=4)


def digits(size: int):
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    if size != 8:
        images = functional.interpolate(images, size=(size, size), mode="bilinear")
    labels = torch.tensor(data.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    images, labels = images[order], labels[order]
    source = (images[:1200], labels[:1200])
    target_train = (images[1200:1500], labels[1200:1500] % 3)
    target_eval = (images[1500:], labels[1500:] % 3)
    return source, target_train, target_eval


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
    model = resnet18(num_classes=10, small_input=True, width=8, in_channels=1)
    train(model, source, settings.source_epochs, 0.05, seed=0)
    return model.eval()


def new_head(source: nn.Module, classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    base = copy.deepcopy(source)
    base.fc = nn.Linear(base.fc.in_features, classes)
    return base.eval()


def spa_method(
    base, data, settings, seed, *, kind, cost="none", distil=False, allocate=False, ranking="global"
):
    """Fine-tune, prune once to the MACs fraction, recover; return the deployed numbers."""
    train_set, eval_set = data
    if kind == "fine_pruning":
        config, lr = spa.FinePruningConfig(), 0.01
    else:
        config, lr = spa.SPLoRAConfig(rank=16 if allocate else 8), 0.05
    torch.manual_seed(seed)
    model = spa.adapt(copy.deepcopy(base), config)
    train(model, train_set, settings.initial_epochs, lr, seed)
    if allocate:
        RankAllocationConfig(budget=0.5).allocate(model)  # r16 -> an average of r8
    teacher = Teacher(model) if distil else None
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
    distiller = Distiller(DistillConfig(weight=0.5, temperature=2.0), teacher) if distil else None
    train(model, train_set, settings.recovery_epochs, lr, seed + 1, distiller)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "task.safetensors"
        spa.save_task(spa.compacted(model, x), path, base_model=base)
        stored = path.stat().st_size
    deployed = spa.fuse(spa.compact(copy.deepcopy(model), x))
    return {
        "accuracy": accuracy(model, eval_set),
        "macs": count_macs(deployed, x[:1]),
        "params": sum(p.numel() for p in deployed.parameters()),
        "bytes": stored,
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


def tp_method(base, data, settings, seed, *, match: str, goal: int):
    """Torch-Pruning Taylor + fine-tuning, its ratio bisected so `match` (macs/params) = goal."""
    train_set, eval_set = data
    torch.manual_seed(seed)
    tuned = copy.deepcopy(base).train()
    for parameter in tuned.parameters():
        parameter.requires_grad_(True)
    train(tuned, train_set, settings.initial_epochs, 0.01, seed)
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
    train(model, train_set, settings.recovery_epochs, 0.01, seed + 1)
    buffer = io.BytesIO()
    torch.save({k: v.float() for k, v in model.state_dict().items()}, buffer)
    return {
        "accuracy": accuracy(model, eval_set),
        "macs": count_macs(model, x),
        "params": sum(p.numel() for p in model.parameters()),
        "bytes": len(buffer.getvalue()),
    }


METHODS = (
    ("spa fine-pruning", {"kind": "fine_pruning"}),
    ("spa fine-pruning, MACs-normalised", {"kind": "fine_pruning", "cost": "macs"}),
    ("spa fine-pruning, local ranking", {"kind": "fine_pruning", "ranking": "local"}),
    ("spa SPLoRA r8", {"kind": "splora"}),
    ("spa SPLoRA r8 + distillation", {"kind": "splora", "distil": True}),
    (
        "spa SPLoRA r16->8 allocated + distillation",
        {"kind": "splora", "distil": True, "allocate": True},
    ),
    (
        "spa SPLoRA r16->8 allocated + distillation, local ranking",
        {"kind": "splora", "distil": True, "allocate": True, "ranking": "local"},
    ),
)


def _cell(values, scale=1.0, digits=1) -> str:
    mean = statistics.mean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def cnn_table(settings: Settings) -> str:
    source_data, target_train, target_eval = digits(settings.size)
    source = source_model(settings, source_data)
    results: dict[str, list[dict]] = {}
    for seed in range(settings.seeds):
        base = new_head(source, 3, seed)
        data = (target_train, target_eval)
        for name, options in METHODS:
            results.setdefault(name, []).append(spa_method(base, data, settings, seed, **options))
        reference = results["spa fine-pruning"][-1]
        for match in ("macs", "params"):
            name = f"Torch-Pruning Taylor + fine-tuning, equal {match}"
            row = tp_method(base, data, settings, seed, match=match, goal=reference[match])
            results.setdefault(name, []).append(row)
    lines = [
        "source model: 10 classes, 1,200 images; accuracy on its own training images "
        f"{accuracy(source, source_data) * 100:.1f}%; target: digit mod 3, 300 training images",
        "",
        f"| method ({settings.seeds} seeds, {settings.fraction:.0%} of the MACs) | accuracy (%) "
        "| kept MMACs | kept params (K) | stored per task (KB) |",
        "|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        lines.append(
            f"| {name} | {_cell([r['accuracy'] for r in rows], 100)} "
            f"| {_cell([r['macs'] for r in rows], 1e-6, 3)} "
            f"| {_cell([r['params'] for r in rows], 1e-3)} "
            f"| {_cell([r['bytes'] for r in rows], 1e-3)} |"
        )
    return "\n".join(lines)


def lm_table(quick: bool, seeds: int) -> str:
    """spa methods on the tiny Llama of `spa demo lm`, through `spa run` configs."""
    from spa.experiments import demo_lm
    from spa.experiments.runner import run

    settings = replace(demo_lm.QUICK if quick else demo_lm.FULL, densities=(0.5,))
    lines = [
        "| method (tiny Llama, 50% heads+FFN) | perplexity | stored per task (KB) |",
        "|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as folder:
        source, _, _ = demo_lm.train_source(settings, Path(folder) / "source")
        for distil in (0.0, 0.5):
            configs = demo_lm.experiment_configs(replace(settings, distill=distil), source)
            for config in configs:
                config = replace(config, seeds=tuple(range(seeds)))
                records = run(config, Path(folder) / config.name).records
                last = [r for r in records if r["step"] == 1]
                lines.append(
                    f"| {config.name} | {_cell([r['metric'] for r in last], 1, 2)} "
                    f"| {_cell([r['bundle_bytes'] for r in last], 1e-3)} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8x8 images, fewer epochs")
    parser.add_argument("--lm", action="store_true", help="also the tiny Llama (slower)")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = replace(QUICK if args.quick else Settings(), seeds=args.seeds)
    start = time.perf_counter()
    print(cnn_table(settings), flush=True)
    if args.lm:
        print()
        print(lm_table(args.quick, args.seeds), flush=True)
    print(f"\nwall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
