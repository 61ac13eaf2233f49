"""`run(config, run_dir)`: the one place that sequences an experiment's stages; resumable.

The task type (`spa.experiments.task_types`, picked by `data.name`: classification, extractive
QA, causal LM) provides the data, loss, metric and deployable model; the runner sequences the same
stages for every task type. Per seed: build data, base and adapted model → for every step of the
pruning schedule (`plan_steps`: an unpruned step then one per density, or one gradual step):
prune, train its epochs → evaluate, measure the deployable (compacted) model, save a task bundle,
append the metrics and write a checkpoint. Then the table and plots of all seeds are written.

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
so the final results equal an uninterrupted run's. A seed whose last step is recorded is not
rebuilt; task types without checkpoints (QA's single gradual step) rerun an interrupted seed.

Distributed (`torchrun ... -m spa run CONFIG`, docs/distributed.md): every rank trains and scores
its shard under DDP with all-reduced criterion statistics (identical masks, checked by
fingerprint); only rank 0 writes files; on resume every rank loads rank 0's checkpoint.

Records: every density record has `metric` (the task type's headline metric: a fraction, or a
perplexity) and `metric_name` ("accuracy", "f1", "perplexity", ...); classification records also
keep `accuracy`, causal-LM records `perplexity`.
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

from spa import distributed
from spa.errors import ConfigError
from spa.experiments import build
from spa.experiments.checkpoint import (
    load_checkpoint,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from spa.experiments.config import ExperimentConfig, config_to_toml, from_dict, to_dict
from spa.experiments.distributed_run import check_distributed
from spa.experiments.files import append_jsonl, atomic_write_text, read_jsonl
from spa.experiments.report import ReportFiles, write_report
from spa.experiments.run_base import keep_base
from spa.experiments.task_types import (
    SeedSession,
    Step,
    TaskType,
    plan_steps,
    task_type_for,
    unsupported_reason,
)
from spa.experiments.train import is_main_process

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
    task_type = task_type_for(config)
    reason = unsupported_reason(task_type, config)
    if reason is not None:
        raise ConfigError(reason)
    run_dir = Path(run_dir if run_dir is not None else config.output_dir)
    with distributed.distributed_session() as context:
        check_distributed(config, context, task_type)
        _prepare_run_dir(run_dir, config)
        distributed.barrier("preparing the run directory")  # others then read what rank 0 wrote
        with _log_to(run_dir / "run.log"):
            logger.info("run %s in %s (seeds %s)", config.name, run_dir, list(config.seeds))
            records: list[dict[str, Any]] = []
            for seed in config.seeds:
                seed_dir = run_dir / f"seed-{seed}"
                records += _run_seed(config, task_type, seed_dir, seed, step_hook)
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
        from spa._toml import tomllib

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


@dataclass
class _Seed:
    """One seed's session with where its files go."""

    seed: int
    folder: Path
    session: SeedSession
    labels: dict[str, Any]
    metric_name: str

    @property
    def metrics_path(self) -> Path:
        return self.folder / METRICS


def _restore(state: _Seed) -> int:
    """Restore the last checkpoint, if any; return the first step index still to run."""
    checkpoint = load_checkpoint(state.folder / CHECKPOINT)
    if checkpoint is None:
        return 0
    state.session.restore(checkpoint)
    set_rng_state(checkpoint["rng"])
    logger.info("seed %d: resuming after step %d", state.seed, checkpoint["step"])
    return checkpoint["step"] + 1


def _train_step(state: _Seed, step: Step) -> None:
    for epoch in range(step.epochs):
        fields = state.session.train_epoch(step, epoch)
        record = {"event": "epoch", **state.labels, "step": step.index, "epoch": epoch}
        _append(state.metrics_path, {**record, **fields})
    state.session.finish_training(step)


def _finish_step(state: _Seed, step: Step) -> dict:
    """Evaluate, deploy and measure, save the bundle, metrics and checkpoint; return the record.

    Every rank evaluates (on all of the eval set, with rank 0's buffers); rank 0 alone measures
    and writes, then sends its record to the others.
    """
    distributed.synchronise_buffers(state.session.model)  # rank 0's normalisation statistics
    evaluation = state.session.evaluate()
    record = _save_step(state, step, evaluation) if is_main_process() else None
    record = distributed.broadcast_from_main(record)
    logger.info(
        "seed %d step %d: density %.3f %s %.4f dParams %d",
        state.seed,
        step.index,
        record["density"],
        state.metric_name,
        record["metric"],
        record["dparams"],
    )
    return record


def _save_step(state: _Seed, step: Step, evaluation) -> dict:
    step_dir = state.folder / f"step-{step.index:02d}-density-{step.target_density:.3f}"
    measured = state.session.deploy(step_dir / BUNDLE)
    record = {
        "event": "density",
        **state.labels,
        "step": step.index,
        "target_density": step.target_density,
        "metric": evaluation.metric,
        "metric_name": state.metric_name,
        **evaluation.extras,
        "loss": evaluation.loss,
        **measured,
        "bundle": str((step_dir / BUNDLE).relative_to(state.folder)),
    }
    atomic_write_text(step_dir / "metrics.json", json.dumps(record, indent=2) + "\n")
    _append(state.metrics_path, record)
    checkpoint = state.session.checkpoint_state()
    if checkpoint is not None:
        save_checkpoint(state.folder / CHECKPOINT, step.index, checkpoint)
    return record


def _run_seed(
    config: ExperimentConfig,
    task_type: TaskType,
    seed_dir: Path,
    seed: int,
    step_hook: StepHook | None,
) -> list[dict[str, Any]]:
    steps = plan_steps(config)
    metrics_path = seed_dir / METRICS
    finished = _kept_records(metrics_path, steps[-1].index + 1, rewrite=False)
    if finished and finished[-1].get("step") == steps[-1].index:
        logger.info("seed %d: already finished", seed)
        return finished
    seed_everything(seed)
    criterion = config.pruning.criterion if config.pruning.density_steps() else "-"
    state = _Seed(
        seed=seed,
        folder=seed_dir,
        session=task_type.start(config, seed),
        labels=_labels(config, seed, criterion),
        metric_name=task_type.metric_name,
    )
    keep_base(config, state.session, seed_dir, writer=is_main_process())  # random base: saved
    start = _restore(state)
    records = _kept_records(metrics_path, start)
    for step in steps:
        if step.index < start:
            continue
        state.session.prune(step)
        _train_step(state, step)
        records.append(_finish_step(state, step))
        if step_hook is not None:
            step_hook(seed, step.index, records[-1])
    return records


def _labels(config: ExperimentConfig, seed: int, criterion: str) -> dict[str, Any]:
    return {
        "experiment": config.name,
        "task": build.task_label(config.data),
        "method": build.method_label(config.adapter),
        "criterion": criterion,
        "seed": seed,
    }


def _append(path: Path, record: dict[str, Any]) -> None:
    if is_main_process():
        append_jsonl(path, record)


def _kept_records(path: Path, start: int, *, rewrite: bool = True) -> list[dict[str, Any]]:
    """Drop metrics of steps from `start` on (unless not `rewrite`); return the kept density
    records."""
    if not path.exists():
        return []
    kept = [r for r in read_jsonl(path) if r.get("step", 0) < start]
    if rewrite and is_main_process():
        atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    return [r for r in kept if r.get("event") == "density"]
