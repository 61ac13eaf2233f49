"""`spa demo lm`: a tiny Llama-style language model pruned with SPLoRA, on a CPU, no downloads.

1. Train a tiny Llama (`spa.models.tiny_llama`: grouped-query attention, SwiGLU, RMSNorm, tied
   embeddings) on the Python reference documentation that ships with CPython
   (`pydoc_data.topics`), with byte-level tokens (cached in the output directory).
2. Freeze it and prune attention heads and FFN neurons step by step, with SPLoRA (the paper's
   method: adapters on the frozen model) and fine-pruning (every weight trains) for comparison,
   one resumable `spa.experiments.runner.run` each (Taylor criterion, task type causal-lm).
3. Print the held-out perplexity per density next to the untrained and the source model's, and
   write the full table, plots and one task bundle per density.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spa.data.text import ByteTokenizer, TokenBlocks, embedded_corpus, split_text
from spa.experiments.build import method_label
from spa.experiments.checkpoint import seed_everything
from spa.experiments.config import (
    AdapterSection,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    PruningConfig,
    TrainConfig,
)
from spa.experiments.files import atomic_write_bytes, atomic_write_text
from spa.experiments.lm_data import DEFAULT_VALIDATION_FRACTION
from spa.experiments.lm_model import evaluate_perplexity, train_lm_epoch
from spa.experiments.report import ReportFiles, write_report
from spa.experiments.runner import RunResult, run
from spa.experiments.train import make_loader
from spa.recovery import DistillConfig

logger = logging.getLogger(__name__)

VOCABULARY = ByteTokenizer.vocab_size  # a uniform guess over bytes has perplexity 256


@dataclass(frozen=True, kw_only=True)
class LMDemoSettings:
    """Sizes and schedule of the language-model demo.

    Args:
        model: `tiny_llama` builder arguments (besides the byte vocabulary).
        sequence_length: tokens (bytes) per block.
        batch_size: blocks per batch.
        eval_blocks: held-out blocks the perplexity is measured on.
        source_steps: optimiser steps of source training.
        source_lr: AdamW learning rate of source training.
        densities: densities visited after the unpruned step.
        steps_per_density: optimiser steps at every density (and before the first pruning).
        rank: SPLoRA rank.
        splora_lr: AdamW learning rate of SPLoRA.
        fine_pruning_lr: AdamW learning rate of fine-pruning.
        scoring_batches: batches the Taylor criterion accumulates over.
        seed: seed of the source model and of every run.
        distill: weight of distillation from the unpruned model (`[distill] weight`; 0 = off).
    """

    model: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {
            "hidden_size": 64,
            "num_layers": 2,
            "num_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 128,
            "max_positions": 128,
        }
    )
    sequence_length: int = 128
    batch_size: int = 16
    eval_blocks: int = 100
    source_steps: int = 2000
    source_lr: float = 3e-3
    densities: tuple[float, ...] = (0.8, 0.6, 0.4, 0.2)
    steps_per_density: int = 120
    rank: int = 8
    splora_lr: float = 3e-3
    fine_pruning_lr: float = 1e-3
    scoring_batches: int = 4
    seed: int = 0
    distill: float = 0.0


FULL = LMDemoSettings()
# A smoke run of the whole pipeline (tests use it): a smaller model and a few steps, still
# clearly below the untrained model's perplexity.
QUICK = dataclasses.replace(
    FULL,
    model={**FULL.model, "hidden_size": 32, "intermediate_size": 64, "max_positions": 64},
    sequence_length=64,
    eval_blocks=16,
    source_steps=80,
    densities=(0.5,),
    steps_per_density=4,
    scoring_batches=1,
)


@dataclass(frozen=True)
class LMDemoResult:
    """What the language-model demo wrote and measured.

    Args:
        output_dir: the output directory.
        source: the source model's state-dict file (the base of every bundle).
        untrained_perplexity: held-out perplexity of the randomly initialised model.
        source_perplexity: held-out perplexity of the source model.
        settings: the settings it ran with.
        runs: one run per method.
        report: the combined table and plots.
        quick: whether this was the short `--quick` run.
    """

    output_dir: Path
    source: Path
    untrained_perplexity: float
    source_perplexity: float
    settings: LMDemoSettings
    runs: tuple[RunResult, ...]
    report: ReportFiles
    quick: bool = False

    def summary(self) -> str:
        """Perplexity per density and method, the reference perplexities and the files."""
        settings = self.settings
        lines = [
            f"Language-model demo: a tiny Llama ({settings.model['num_layers']} layers, "
            f"{settings.model['num_heads']} query / {settings.model['num_key_value_heads']} "
            f"key-value heads, hidden size {settings.model['hidden_size']}) on the Python "
            "reference documentation (pydoc_data.topics, ships with CPython), byte tokens, "
            f"blocks of {settings.sequence_length}.",
            f"Held-out perplexity (lower is better; a uniform guess over bytes: {VOCABULARY}): "
            f"untrained {self.untrained_perplexity:.1f}, source model after "
            f"{settings.source_steps} steps {self.source_perplexity:.2f}.",
            "Pruned (attention heads and FFN neurons, Taylor criterion) and trained "
            f"{settings.steps_per_density} steps per density:",
            "",
            "| Method | Density (%) | dParams (K) | MFLOPs / sequence | Perplexity | "
            "Bundle (KiB) |",
            "|---|---|---|---|---|---|",
        ]
        for result in self.runs:
            for record in result.records:
                lines.append(
                    f"| {record['method']} | {100 * record['density']:.1f} | "
                    f"{record['dparams'] / 1e3:.1f} | {record['flops'] / 1e6:.2f} | "
                    f"{record['perplexity']:.2f} | {record['bundle_bytes'] / 1024:.1f} |"
                )
        lines += [
            "",
            "dParams: parameters the task learned (SPLoRA: adapters and norms; fine-pruning: "
            "every kept weight). Each density's bundle loads onto the source model.",
            f"Output written to {self.output_dir}:",
            f"  table:   {self.report.markdown}, {self.report.csv}",
            f"  plots:   {', '.join(str(p) for p in self.report.plots)}",
            f"  runs:    {self.runs[0].run_dir.parent} (one bundle per density in "
            "seed-0/step-*/task.safetensors)",
            f"  source:  {self.source} (the shared base: tiny_llama, byte vocabulary)",
        ]
        if self.quick:
            lines.append(
                "NOTE: --quick is a short smoke run (a smaller model, a few steps): it shows "
                "the pipeline working, not the method's results. Run `spa demo lm` for those."
            )
        return "\n".join(lines)


def _model_options(settings: LMDemoSettings) -> dict[str, Any]:
    return {**settings.model, "vocab_size": VOCABULARY}


def _blocks(settings: LMDemoSettings) -> tuple[TokenBlocks, TokenBlocks]:
    """Training and held-out blocks, split exactly as the runs' `data.name = "embedded"`."""
    train, held_out = split_text(embedded_corpus(), DEFAULT_VALIDATION_FRACTION)
    tokenizer = ByteTokenizer()
    length = settings.sequence_length
    return (
        TokenBlocks(tokenizer.encode(train), length),
        TokenBlocks(tokenizer.encode(held_out), length, settings.eval_blocks),
    )


def _source_model(settings: LMDemoSettings) -> nn.Module:
    from spa.models import create_model

    return create_model("tiny_llama", **_model_options(settings))


def train_source(settings: LMDemoSettings, folder: Path) -> tuple[Path, float, float]:
    """Train the source language model, or reuse the cached one.

    Args:
        settings: demo settings.
        folder: where `model.pt` and `source.json` (settings and perplexities) are kept.

    Returns:
        The state-dict file, the untrained and the trained model's held-out perplexity.
    """
    path, info_path = folder / "model.pt", folder / "source.json"
    keys = ("model", "sequence_length", "batch_size", "eval_blocks", "source_steps", "source_lr")
    wanted = {"seed": settings.seed, **{key: getattr(settings, key) for key in keys}}
    if path.exists() and info_path.exists():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if info.get("settings") == wanted:
            logger.info("using the cached source model %s", path)
            return path, float(info["untrained_perplexity"]), float(info["perplexity"])
    seed_everything(settings.seed)
    train, held_out = _blocks(settings)
    model = _source_model(settings)
    untrained = evaluate_perplexity(model, held_out, 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.source_lr, weight_decay=0.0)
    per_epoch = len(train) // settings.batch_size
    done, epoch = 0, 0
    while done < settings.source_steps:
        steps = min(per_epoch, settings.source_steps - done)
        loader = make_loader(
            train, settings.batch_size, shuffle=True, seed=settings.seed, epoch=epoch
        )
        train_lm_epoch(
            model, loader, optimizer, max_batches=steps, description=f"source epoch {epoch + 1}"
        )
        done, epoch = done + steps, epoch + 1
    trained = evaluate_perplexity(model, held_out, 64)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    atomic_write_bytes(path, buffer.getvalue())
    info = {"settings": wanted, "untrained_perplexity": untrained, "perplexity": trained}
    atomic_write_text(info_path, json.dumps(info) + "\n")
    logger.info(
        "source model: perplexity %.3f (untrained %.1f), saved to %s", trained, untrained, path
    )
    return path, untrained, trained


def experiment_configs(settings: LMDemoSettings, source: Path) -> list[ExperimentConfig]:
    """One causal-LM experiment per method: SPLoRA and fine-pruning of heads and FFN neurons."""
    configs = []
    for method, table, lr in (  # the demo's presets: run name, [adapter] table, lr
        ("splora", {"kind": "splora", "rank": settings.rank}, settings.splora_lr),
        ("fine-pruning", {"kind": "fine_pruning"}, settings.fine_pruning_lr),
    ):
        adapter = AdapterSection.from_table(table)
        configs.append(
            ExperimentConfig(
                name=f"lm-{method}" + ("-distilled" if settings.distill else ""),
                model=ModelConfig(name="tiny_llama", options=settings.model, weights=str(source)),
                data=DataConfig(
                    name="embedded",
                    options={
                        "sequence_length": settings.sequence_length,
                        "byte_fallback": True,
                        "max_eval_blocks": settings.eval_blocks,
                    },
                    batch_size=settings.batch_size,
                    eval_batch_size=64,
                ),
                adapter=adapter,
                pruning=PruningConfig(
                    criterion="taylor",
                    densities=settings.densities,
                    scoring_batches=settings.scoring_batches,
                ),
                train=TrainConfig(
                    optimizer="adamw",
                    lr=lr,
                    weight_decay=0.0,
                    lr_schedule="constant",
                    initial_epochs=1,
                    epochs_per_step=1,
                    max_batches_per_epoch=settings.steps_per_density,
                ),
                distill=DistillConfig(weight=settings.distill),
                seeds=(settings.seed,),
            )
        )
    return configs


def run_lm_demo(
    output_dir: str | Path = "spa-demo-lm-output", *, quick: bool = False, distill: float = 0.0
) -> LMDemoResult:
    """Run the language-model demo (resumable: finished parts are reused).

    Args:
        output_dir: where everything is written.
        quick: a smaller model and a few steps: a short smoke run.
        distill: weight of distillation from the unpruned model during recovery (0 = off).

    Returns:
        The results; `summary()` is what `spa demo lm` prints.
    """
    settings = dataclasses.replace(QUICK if quick else FULL, distill=distill)
    output_dir = Path(output_dir)
    suffix = "-quick" if quick else ""  # quick and full results never mix
    # The tiny model's matrices are too small for intra-op threads to pay off, and on a CPU
    # shared with other work extra threads slow every step down several times over.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        source, untrained, trained = train_source(settings, output_dir / f"source{suffix}")
        runs = []
        for config in experiment_configs(settings, source):
            logger.info("demo run %s (%s)", config.name, method_label(config.adapter))
            runs.append(run(config, output_dir / f"runs{suffix}" / config.name))
    finally:
        torch.set_num_threads(threads)
    report = write_report([result.run_dir for result in runs], output_dir)
    return LMDemoResult(
        output_dir=output_dir,
        source=source,
        untrained_perplexity=untrained,
        source_perplexity=trained,
        settings=settings,
        runs=tuple(runs),
        report=report,
        quick=quick,
    )
