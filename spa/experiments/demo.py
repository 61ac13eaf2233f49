"""`spa demo`: transfer-pruning on scikit-learn's digits, end to end on a CPU, no downloads.

1. Train a small ResNet-18 on the `source` digits task (cached in the output directory).
2. Transfer-prune it to every target task with fine-pruning and SPLoRA (Taylor criterion,
   densities down to 10%), one resumable `spa.experiments.runner.run` per (task, method).
3. Write the combined table (Markdown + CSV) and plots.
4. Load the task bundles of every target task into one `TaskHost` over the source model, switch
   between them and measure each task's accuracy from the switched model.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spa.experiments.build import method_label
from spa.experiments.config import (
    AdapterSection,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    PruningConfig,
    TrainConfig,
)
from spa.experiments.files import atomic_write_bytes, atomic_write_text
from spa.experiments.report import ReportFiles, markdown_table, write_report
from spa.experiments.runner import RunResult, run, seed_everything
from spa.experiments.train import (
    block_learning_rate,
    evaluate,
    make_loader,
    make_optimizer,
    set_learning_rate,
    train_epoch,
)
from spa.progress import progress as show_progress
from spa.recovery import DistillConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class DemoSettings:
    """Sizes and schedule of the demo.

    Args:
        tasks: target digits tasks.
        densities: densities visited after the unpruned step.
        source_epochs: epochs of source training.
        initial_epochs: epochs on the target task before pruning.
        epochs_per_step: epochs after each pruning step.
        rank: SPLoRA rank.
        width: ResNet-18 stem width.
        image_size: digits are upsampled to this size.
        batch_size: training batch size.
        max_batches_per_epoch: cap on batches per epoch (quick mode).
        scoring_batches: batches the Taylor criterion accumulates over.
        source_lr: source-training learning rate.
        fine_pruning_lr: learning rate of fine-pruning.
        splora_lr: learning rate of SPLoRA.
        seed: seed of the source model and of the digits split.
        seeds: training seeds of every target run (mean ± std in the table).
        distill: weight of distillation from the unpruned model (`[distill] weight`; 0 = off).
    """

    tasks: tuple[str, ...] = ("parity", "mod3", "ge5")
    densities: tuple[float, ...] = (0.7, 0.5, 0.3, 0.2, 0.1)
    source_epochs: int = 12
    initial_epochs: int = 3
    epochs_per_step: int = 2
    rank: int = 8
    width: int = 8
    image_size: int = 16
    batch_size: int = 32
    max_batches_per_epoch: int | None = None
    scoring_batches: int = 4
    source_lr: float = 0.05
    fine_pruning_lr: float = 0.01
    splora_lr: float = 0.05
    seed: int = 0
    seeds: tuple[int, ...] = (0, 1, 2)
    distill: float = 0.0


FULL = DemoSettings()
# Quick mode still learns: the source model scores far above chance (about 80% on 10 classes;
# `tests/experiments/test_demo.py` checks it) with 10 batches per epoch on 8 x 8 images.
QUICK = dataclasses.replace(
    FULL,
    tasks=("parity", "mod3"),
    densities=(0.5, 0.1),
    source_epochs=4,
    initial_epochs=2,
    epochs_per_step=1,
    max_batches_per_epoch=10,
    scoring_batches=2,
    seeds=(0,),
    image_size=8,
)


@dataclass(frozen=True)
class SwitchResult:
    """One task served by the shared `TaskHost`.

    Args:
        name: host task name.
        bundle: the bundle file.
        bundle_bytes: its size on disk.
        accuracy: test accuracy of the switched model.
        recorded_accuracy: test accuracy the run recorded for the trained model.
        switch_ms: time of `set_task` plus the first forward pass over the test set.
    """

    name: str
    bundle: Path
    bundle_bytes: int
    accuracy: float
    recorded_accuracy: float
    switch_ms: float


@dataclass(frozen=True)
class DemoResult:
    """What the demo wrote and measured.

    Args:
        output_dir: the output directory.
        source: the source model's state-dict file (the base of every bundle).
        source_accuracy: test accuracy of the source model on the source task.
        runs: one run per (task, method).
        report: the combined table and plots.
        switches: the task-switching results.
        quick: whether this was the short `--quick` run.
    """

    output_dir: Path
    source: Path
    source_accuracy: float
    runs: tuple[RunResult, ...]
    report: ReportFiles
    switches: tuple[SwitchResult, ...]
    quick: bool = False

    def summary(self) -> str:
        """The results table, the task-switching results and where every file was written."""
        lines = [markdown_table(self.report.rows), ""]
        lines.append("Task switching: all target-task bundles in one TaskHost over one base")
        lines.append(
            "| Task bundle | Bundle (KiB) | Accuracy switched (%) | Accuracy trained (%) |"
            " Switch + eval (ms) |"
        )
        lines.append("|---|---|---|---|---|")
        for switch in self.switches:
            lines.append(
                f"| {switch.name} | {switch.bundle_bytes / 1024:.1f} | {100 * switch.accuracy:.2f}"
                f" | {100 * switch.recorded_accuracy:.2f} | {switch.switch_ms:.1f} |"
            )
        chance = 1 / SOURCE_CLASSES
        lines += [
            "",
            f"Source model accuracy on the source task: {100 * self.source_accuracy:.2f}% "
            f"(chance {100 * chance:.0f}%; {SOURCE_CLASSES} digit classes)",
            f"Output written to {self.output_dir}:",
            f"  table:   {self.report.markdown}, {self.report.csv}",
            f"  plots:   {', '.join(str(p) for p in self.report.plots)}",
            f"  runs:    {self.runs[0].run_dir.parent} (config, metrics, log, one bundle per "
            "density in seed-*/step-*/task.safetensors)",
            f"  source:  {self.source} (the shared base model: `--base` of `spa bundle verify` "
            "and `spa export`)",
        ]
        if self.source_accuracy < 2 * chance:
            lines.append(
                "WARNING: the source model is barely above chance, so the transfer results say "
                "nothing about the method; train longer (run `spa demo` without --quick)."
            )
        if self.quick:
            lines.append(
                f"NOTE: --quick is a short smoke run ({QUICK.max_batches_per_epoch} batches per "
                f"epoch, {len(QUICK.seeds)} seed, {len(QUICK.densities)} densities, "
                f"{QUICK.image_size}x{QUICK.image_size} images): it shows the whole pipeline "
                "working, not the method's final accuracy. Run `spa demo` for the comparison."
            )
        return "\n".join(lines)


def _source_config(settings: DemoSettings) -> dict[str, Any]:
    keys = ("source_epochs", "width", "image_size", "batch_size", "max_batches_per_epoch")
    return {
        "seed": settings.seed,
        **{k: getattr(settings, k) for k in keys},
        "source_lr": settings.source_lr,
    }


SOURCE_CLASSES = 10  # the source task: all ten digits


def _source_model(settings: DemoSettings) -> nn.Module:
    from spa.models import create_model

    return create_model(
        "resnet18",
        num_classes=SOURCE_CLASSES,
        small_input=True,
        width=settings.width,
        in_channels=1,
    )


def train_source(settings: DemoSettings, folder: Path) -> tuple[Path, float]:
    """Train the source model on the `source` digits task, or reuse the cached one.

    Args:
        settings: demo settings.
        folder: where `model.pt` and `source.json` (settings and accuracy) are kept.

    Returns:
        The state-dict file and the source test accuracy.
    """
    from spa.data import load_dataset

    path, info_path = folder / "model.pt", folder / "source.json"
    wanted = _source_config(settings)
    if path.exists() and info_path.exists():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if info.get("settings") == wanted:
            logger.info("using the cached source model %s", path)
            return path, float(info["accuracy"])
    seed_everything(settings.seed)
    options = {"task": "source", "size": settings.image_size, "seed": settings.seed}
    train_set = load_dataset("digits", None, "train", **options)
    test_set = load_dataset("digits", None, "test", **options)
    model = _source_model(settings)
    optimizer = make_optimizer(model, "sgd", settings.source_lr, 0.9, 5e-4)
    for epoch in range(settings.source_epochs):
        set_learning_rate(
            optimizer,
            block_learning_rate(settings.source_lr, epoch, settings.source_epochs, "paper"),
        )
        loader = make_loader(
            train_set, settings.batch_size, shuffle=True, seed=settings.seed, epoch=epoch
        )
        train_epoch(
            model,
            loader,
            optimizer,
            max_batches=settings.max_batches_per_epoch,
            description=f"source epoch {epoch + 1}/{settings.source_epochs}",
        )
    accuracy = evaluate(model, make_loader(test_set, 256, shuffle=False)).accuracy
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    atomic_write_bytes(path, buffer.getvalue())
    atomic_write_text(info_path, json.dumps({"settings": wanted, "accuracy": accuracy}) + "\n")
    logger.info("source model: test accuracy %.4f, saved to %s", accuracy, path)
    return path, accuracy


def experiment_configs(settings: DemoSettings, source: Path) -> list[ExperimentConfig]:
    """One experiment config per (target task, method): fine-pruning and SPLoRA."""
    configs = []
    for task in settings.tasks:
        for method, table, lr in (  # the demo's presets: run name, [adapter] table, lr
            ("fine-pruning", {"kind": "fine_pruning"}, settings.fine_pruning_lr),
            ("splora", {"kind": "splora", "rank": settings.rank}, settings.splora_lr),
        ):
            adapter = AdapterSection.from_table(table)
            configs.append(
                ExperimentConfig(
                    name=f"{task}-{method}" + ("-distilled" if settings.distill else ""),
                    model=ModelConfig(
                        name="resnet18",
                        options={"small_input": True, "width": settings.width},
                        weights=str(source),
                    ),
                    data=DataConfig(
                        name="digits",
                        options={"task": task, "size": settings.image_size, "seed": settings.seed},
                        batch_size=settings.batch_size,
                    ),
                    adapter=adapter,
                    pruning=PruningConfig(
                        criterion="taylor",
                        densities=settings.densities,
                        scoring_batches=settings.scoring_batches,
                    ),
                    train=TrainConfig(
                        initial_epochs=settings.initial_epochs,
                        epochs_per_step=settings.epochs_per_step,
                        lr=lr,
                        max_batches_per_epoch=settings.max_batches_per_epoch,
                    ),
                    distill=DistillConfig(weight=settings.distill),
                    seeds=settings.seeds,
                )
            )
    return configs


def switch_tasks(
    settings: DemoSettings, source: Path, runs: list[tuple[ExperimentConfig, RunResult]]
) -> list[SwitchResult]:
    """Serve the lowest-density bundle of every run from one `TaskHost` and evaluate each.

    Args:
        settings: demo settings.
        source: the source model's state-dict file (the shared base).
        runs: the finished runs with their configs.

    Returns:
        One result per task bundle, in the order served.
    """
    from spa.data import load_dataset
    from spa.models import load_torchvision_weights
    from spa.tasks import TaskHost

    base = _source_model(settings)
    load_torchvision_weights(base, source)
    base.eval()
    host = TaskHost(base, cache_size=2)
    entries = []
    for config, result in runs:
        final = result.records[-1]
        bundle = result.run_dir / f"seed-{final['seed']}" / final["bundle"]
        name = f"{config.data.options['task']} · {method_label(config.adapter)} @ " + (
            f"{final['target_density']:.0%}"
        )
        host.add_task(name, bundle)
        entries.append((name, bundle, config, final))
    results = []
    for name, bundle, config, final in entries:
        options = dict(config.data.options)
        test_set = load_dataset("digits", None, "test", **options)
        loader = make_loader(test_set, 256, shuffle=False)
        start = time.perf_counter()
        host.set_task(name)
        correct = total = 0
        for inputs, labels in loader:
            correct += int((host(inputs).argmax(dim=1) == labels).sum())
            total += len(labels)
        elapsed = (time.perf_counter() - start) * 1e3
        results.append(
            SwitchResult(
                name=name,
                bundle=bundle,
                bundle_bytes=bundle.stat().st_size,
                accuracy=correct / total,
                recorded_accuracy=float(final["accuracy"]),
                switch_ms=elapsed,
            )
        )
        logger.info("switched to %s: accuracy %.4f", name, correct / total)
    return results


SMOKE_TEST_DIR = "smoke-test"
SMOKE_TEST_NOTE = (
    "**Smoke test** (`spa demo --quick`: 10 batches per epoch, one seed, two densities): these "
    "numbers check that the pipeline runs; they say nothing about the methods. Run `spa demo` "
    "for the comparison.\n\n"
)


def run_demo(
    output_dir: str | Path = "spa-demo-output", *, quick: bool = False, distill: float = 0.0
) -> DemoResult:
    """Run the whole demo (resumable: finished parts are reused) and return its results.

    Args:
        output_dir: where everything is written.
        quick: fewer tasks, epochs and densities: a short smoke run (about 30 s of CPU time).
        distill: weight of distillation from the unpruned model during recovery (0 = off).

    Returns:
        The results; `summary()` is what `spa demo` prints.
    """
    settings = dataclasses.replace(QUICK if quick else FULL, distill=distill)
    output_dir = Path(output_dir)
    suffix = "-quick" if quick else ""  # quick and full results never mix
    source, source_accuracy = train_source(settings, output_dir / f"source{suffix}")
    runs = []
    configs = experiment_configs(settings, source)
    for config in show_progress(configs, desc="demo runs (task x method)"):
        result = run(config, output_dir / f"runs{suffix}" / config.name)
        runs.append((config, result))
    # The quick run's table and plots go to their own folder, marked as a smoke test, so they
    # never replace the full demo's table.md, table.csv and plots/.
    report_dir = output_dir / SMOKE_TEST_DIR if quick else output_dir
    report = write_report([result.run_dir for _, result in runs], report_dir)
    if quick:
        atomic_write_text(report.markdown, SMOKE_TEST_NOTE + report.markdown.read_text())
    switches = switch_tasks(settings, source, runs)
    return DemoResult(
        output_dir=output_dir,
        source=source,
        source_accuracy=source_accuracy,
        runs=tuple(result for _, result in runs),
        report=report,
        switches=tuple(switches),
        quick=quick,
    )
