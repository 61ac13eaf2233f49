"""`run(config, run_dir)`: the one place that sequences an experiment's stages; resumable.

Per seed: build data and base model → adapt → train E0 epochs unpruned → for every density:
prune, train E epochs → evaluate, measure the compacted model, save a task bundle, append the
metrics and write a checkpoint. Then the table and plots of all seeds are written.

Run directory::

    config.toml                     resolved config, stamped with spa_version
    run.log                         the log of every invocation
    table.md, table.csv, plots/     mean ± std over seeds (rebuilt by `spa report`)
    seed-<s>/metrics.jsonl          one JSON record per epoch and per density step
    seed-<s>/checkpoint.pt          model + optimiser + RNG states + last completed step
    seed-<s>/step-<k>-density-<d>/  task.safetensors (the bundle) and metrics.json

Resuming: the checkpoint is written atomically after each completed density step. Running the
same command again restores it (model, optimiser, RNG states, channel masks), drops metrics of
the interrupted step and continues with the next step. Data order depends only on (seed, epoch),
so the final results equal an uninterrupted run's.

Distributed (`torchrun ... -m spa run CONFIG`, docs/distributed.md): every rank trains and scores
its shard under DDP with all-reduced criterion statistics (identical masks, checked by
fingerprint); only rank 0 writes files; on resume every rank loads rank 0's checkpoint.

Question answering (`data.name = "squad"`, `spa.experiments.qa_run`): one step per seed (gradual
block pruning throughout training); a finished seed is skipped on resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spa import distributed
from spa.errors import ConfigError
from spa.experiments import build, measure
from spa.experiments.checkpoint import (
    load_checkpoint,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from spa.experiments.config import ExperimentConfig, config_to_toml, from_dict, to_dict
from spa.experiments.distributed_run import check_distributed, prune_on_all_ranks
from spa.experiments.files import append_jsonl, atomic_write_text, read_jsonl
from spa.experiments.pruning_steps import ChannelPruner
from spa.experiments.report import ReportFiles, write_report
from spa.experiments.train import (
    block_learning_rate,
    evaluate,
    is_main_process,
    make_loader,
    make_optimizer,
    set_learning_rate,
    train_epoch,
    wrap_model,
)

logger = logging.getLogger(__name__)

StepHook = Callable[[int, int, dict[str, Any]], None]
"""Called as `hook(seed, step, record)` after a density step is complete and checkpointed."""

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
BUNDLE = "task.safetensors"


@dataclass(frozen=True)
class RunResult:
    """What a run produced.

    Args:
        run_dir: the run directory.
        records: the per-density records of every seed, in order.
        report: the table and plot files.
    """

    run_dir: Path
    records: tuple[dict[str, Any], ...]
    report: ReportFiles


def run(
    config: ExperimentConfig,
    run_dir: str | Path | None = None,
    *,
    step_hook: StepHook | None = None,
) -> RunResult:
    """Run (or resume) an experiment in `run_dir` and write its table and plots.

    Args:
        config: the validated experiment config.
        run_dir: the run directory; `config.output_dir` if omitted.
        step_hook: optional callback after every completed, checkpointed density step.

    Returns:
        The run directory, the per-density records and the report files.

    Raises:
        ConfigError: if the config cannot run here, or `run_dir` holds a run of another config
            (naming the first differing key).
    """
    reason = build.unsupported_reason(config)
    if reason is not None:
        raise ConfigError(reason)
    run_dir = Path(run_dir if run_dir is not None else config.output_dir)
    with distributed.distributed_session() as context:
        check_distributed(config, context)
        _prepare_run_dir(run_dir, config)
        distributed.barrier("preparing the run directory")  # others then read what rank 0 wrote
        with _log_to(run_dir / "run.log"):
            logger.info("run %s in %s (seeds %s)", config.name, run_dir, list(config.seeds))
            records: list[dict[str, Any]] = []
            run_seed = _run_qa_seed if config.data.name == "squad" else _run_seed
            for seed in config.seeds:
                records += run_seed(config, run_dir / f"seed-{seed}", seed, step_hook)
            report = write_report([run_dir], run_dir) if is_main_process() else None
            report = distributed.broadcast_from_main(report)
            logger.info("finished %s: table %s", config.name, report.markdown)
    return RunResult(run_dir=run_dir, records=tuple(records), report=report)


def _prepare_run_dir(run_dir: Path, config: ExperimentConfig) -> None:
    path = run_dir / "config.toml"
    # A directory whose run stopped before any seed recorded anything (e.g. a refused model
    # argument) holds nothing to resume: the corrected config replaces its config.toml.
    started = any(run_dir.glob(f"seed-*/{METRICS}")) or any(run_dir.glob(f"seed-*/{CHECKPOINT}"))
    if path.exists() and started:
        import tomllib

        previous = tomllib.loads(path.read_text(encoding="utf-8"))
        previous.pop("spa_version", None)
        difference = _first_difference(to_dict(from_dict(previous)), to_dict(config))
        if difference is not None:
            raise ConfigError(
                f"{run_dir} holds a run of a different config (key {difference!r} differs); "
                "use another output directory or delete this one to start over"
            )
        logger.info("resuming the run in %s", run_dir)
        return
    if is_main_process():  # recorded with the directory it really runs in
        resolved = dataclasses.replace(config, output_dir=str(run_dir))
        atomic_write_text(path, config_to_toml(resolved))


def _first_difference(old: Any, new: Any, prefix: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if key == "output_dir" and not prefix:
                continue  # the same run may be resumed from another path
            found = _first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
            if found is not None:
                return found
        return None
    return None if old == new else prefix.rstrip(".")


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[None]:
    if not is_main_process():  # only rank 0 writes the log file
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("spa")
    previous_level = root.level
    root.addHandler(handler)
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.close()


def _block_epochs(config: ExperimentConfig, step: int) -> tuple[int, int]:
    """(epochs of the block of `step`, global index of its first epoch)."""
    train = config.train
    if step == 0:
        return train.initial_epochs, 0
    return train.epochs_per_step, train.initial_epochs + (step - 1) * train.epochs_per_step


@dataclass
class _Seed:
    """Everything one seed's run works on."""

    seed: int
    folder: Path
    train_set: Any
    eval_set: Any
    example: torch.Tensor  # (1, C, H, W)
    base: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    pruner: ChannelPruner | None
    densities: list[float]
    labels: dict[str, Any]
    model_options: dict[str, Any] | None = None  # the base's builder arguments, for bundles

    @property
    def metrics_path(self) -> Path:
        return self.folder / METRICS


def _setup(config: ExperimentConfig, seed_dir: Path, seed: int) -> _Seed:
    seed_everything(seed)
    train_set, eval_set = build.build_datasets(config.data)
    example = train_set[0][0].unsqueeze(0).to(config.train.device)
    base, model = build.build_models(config.model, train_set.num_classes, example.shape[1])
    build.adapt_model(model, config)
    model.to(config.train.device)
    train = config.train
    optimizer = make_optimizer(model, train.optimizer, train.lr, train.momentum, train.weight_decay)
    densities = [1.0] + config.pruning.density_steps()
    pruner = ChannelPruner(model, example, config.pruning) if len(densities) > 1 else None
    criterion = config.pruning.criterion if pruner is not None else "-"
    return _Seed(
        seed=seed,
        folder=seed_dir,
        train_set=train_set,
        eval_set=eval_set,
        example=example,
        base=measure.freeze(base),
        model=model,
        optimizer=optimizer,
        pruner=pruner,
        densities=densities,
        labels=_labels(config, seed, criterion),
        model_options=build.base_options(config.model, train_set.num_classes, example.shape[1]),
    )


def _restore(state: _Seed) -> int:
    """Restore the last checkpoint, if any; return the first step still to run."""
    checkpoint = load_checkpoint(state.folder / CHECKPOINT)
    if checkpoint is None:
        return 0
    state.model.load_state_dict(checkpoint["model"])
    state.optimizer.load_state_dict(checkpoint["optimizer"])
    if state.pruner is not None:
        state.pruner.restore(state.model, checkpoint["masks"])
    set_rng_state(checkpoint["rng"])
    logger.info("seed %d: resuming after step %d", state.seed, checkpoint["step"])
    return checkpoint["step"] + 1


def _train_block(
    config: ExperimentConfig, state: _Seed, training: nn.Module, step: int, target: float
) -> None:
    train = config.train
    epochs, first_epoch = _block_epochs(config, step)
    for epoch in range(epochs):
        lr = block_learning_rate(train.lr, epoch, epochs, train.lr_schedule)
        set_learning_rate(state.optimizer, lr)
        loader = make_loader(
            state.train_set,
            config.data.batch_size,
            shuffle=True,
            seed=state.seed,
            epoch=first_epoch + epoch,
            shard=True,
        )
        stats = train_epoch(
            training,
            loader,
            state.optimizer,
            device=train.device,
            max_batches=train.max_batches_per_epoch,
            description=f"seed {state.seed} density {target:.0%} epoch {epoch + 1}/{epochs}",
        )
        record = {"event": "epoch", **state.labels, "step": step, "epoch": epoch, "lr": lr}
        _append(state.metrics_path, {**record, "loss": stats.loss, "accuracy": stats.accuracy})


def _finish_step(config: ExperimentConfig, state: _Seed, step: int, target: float) -> dict:
    """Evaluate, measure, save the bundle, metrics and checkpoint; return the density record.

    Every rank evaluates (on all of the eval set, with rank 0's buffers); rank 0 alone measures
    and writes, then sends its record to the others.
    """
    distributed.synchronise_buffers(state.model)  # rank 0's BatchNorm statistics everywhere
    eval_loader = make_loader(state.eval_set, config.data.eval_batch_size, shuffle=False)
    result = evaluate(state.model, eval_loader, device=config.train.device)
    record = _save_step(config, state, step, target, result) if is_main_process() else None
    record = distributed.broadcast_from_main(record)
    logger.info(
        "seed %d step %d: density %.3f accuracy %.4f dParams %d",
        state.seed,
        step,
        record["density"],
        record["accuracy"],
        record["dparams"],
    )
    return record


def _save_step(config: ExperimentConfig, state: _Seed, step: int, target: float, result) -> dict:
    step_dir = state.folder / f"step-{step:02d}-density-{target:.3f}"
    measured = measure.measure_task(
        state.model,
        state.base,
        state.example,
        step_dir / BUNDLE,
        config.train.latency_batch_size,
        model_name=config.model.name,
        model_options=state.model_options,
    )
    record = {
        "event": "density",
        **state.labels,
        "step": step,
        "target_density": target,
        "num_classes": state.train_set.num_classes,  # the report's chance level
        "accuracy": result.accuracy,
        "loss": result.loss,
        **measured,
        "bundle": str((step_dir / BUNDLE).relative_to(state.folder)),
    }
    atomic_write_text(step_dir / "metrics.json", json.dumps(record, indent=2) + "\n")
    _append(state.metrics_path, record)
    masks = state.pruner.masks() if state.pruner is not None else None
    save_checkpoint(state.folder / CHECKPOINT, step, state.model, state.optimizer, masks)
    return record


def _run_seed(
    config: ExperimentConfig, seed_dir: Path, seed: int, step_hook: StepHook | None
) -> list[dict[str, Any]]:
    state = _setup(config, seed_dir, seed)
    start = _restore(state)
    records = _kept_records(state.metrics_path, start)
    training = wrap_model(state.model, state.example)  # once: pruning only changes masks
    for step, target in enumerate(state.densities):
        if step < start:
            continue
        if step > 0:
            scoring = make_loader(
                state.train_set, config.data.batch_size, shuffle=False, shard=True
            )
            prune_on_all_ranks(state.model, state.pruner, target, scoring)
        _train_block(config, state, training, step, target)
        records.append(_finish_step(config, state, step, target))
        if step_hook is not None:
            step_hook(seed, step, records[-1])
    return records


def _labels(config: ExperimentConfig, seed: int, criterion: str) -> dict[str, Any]:
    return {
        "experiment": config.name,
        "task": build.task_label(config.data),
        "method": build.method_label(config.adapter),
        "criterion": criterion,
        "seed": seed,
    }


def _run_qa_seed(
    config: ExperimentConfig, seed_dir: Path, seed: int, step_hook: StepHook | None
) -> list[dict[str, Any]]:
    """One QA seed as a single step (resumed as a whole: a finished seed is skipped)."""
    from spa.experiments.qa_run import run_qa_seed

    metrics_path = seed_dir / METRICS
    done = _kept_records(metrics_path, 2) if metrics_path.exists() else []
    if done:
        logger.info("seed %d: already finished", seed)
        return done
    seed_everything(seed)
    record = run_qa_seed(config, seed_dir, seed, _labels(config, seed, config.pruning.criterion))
    step_dir = seed_dir / Path(record["bundle"]).parent
    if is_main_process():
        atomic_write_text(step_dir / "metrics.json", json.dumps(record, indent=2) + "\n")
        _append(metrics_path, record)
    if step_hook is not None:
        step_hook(seed, 1, record)
    return [record]


def _append(path: Path, record: dict[str, Any]) -> None:
    if is_main_process():
        append_jsonl(path, record)


def _kept_records(path: Path, start: int) -> list[dict[str, Any]]:
    """Drop metrics of steps after the checkpoint; return the kept density records."""
    if not path.exists():
        return []
    kept = [r for r in read_jsonl(path) if r.get("step", 0) < start]
    if is_main_process():
        atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    return [r for r in kept if r.get("event") == "density"]
