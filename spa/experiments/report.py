"""Result tables (Markdown + CSV, mean ± std over seeds) and plots from finished run directories.

Every run directory holds `seed-*/metrics.jsonl`; its `"event": "density"` records (one per
density step, written by the runner) are all a report needs. Tables always put density, dParams
and FLOPs side by side and label FLOPs and MACs explicitly (1 MAC = 2 FLOPs). The score column is
the task type's metric (`metric`, named by `metric_name`: accuracy, F1, perplexity, ...; runs
recorded before metric names read `accuracy`): fractions (accuracy, F1) are shown in percent,
perplexity as it is (`metric_scale`). Latency is the median of timed runs with the range from
the seeds' lowest first to their highest third quartile, never a mean ± std (one disturbed run
would dominate it); a spread wider than `WILD_SPREAD` x the median is marked and warned about.

Comparing runs never mixes experiments: rows are grouped by the run's resolved config (its
`config.toml` without `output_dir` and `seeds`; a run without one is its own experiment), each row
names the run(s) it comes from, and a seed that appears twice (the same run given twice, or two
copies of one experiment with the same seed) is refused instead of being counted twice.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spa._toml import tomllib
from spa.errors import ConfigError
from spa.experiments.files import atomic_write_text, read_jsonl
from spa.experiments.plots import metric_scale, write_plots
from spa.experiments.structure import write_structure

logger = logging.getLogger(__name__)

# Numeric columns aggregated over seeds as mean ± std: (record key, table header, scale, decimals).
_COLUMNS = (
    ("density", "Density (%)", 100.0, 1),
    ("dparams", "dParams (K)", 1e-3, 1),
    ("flops", "MFLOPs", 1e-6, 2),
    ("macs", "MMACs", 1e-6, 2),
    ("metric", "Score (%)", 100.0, 2),  # the scale and header depend on the metric
    ("bundle_bytes", "Bundle (KiB)", 1 / 1024, 1),
)
_LATENCY_HEADER = "CPU latency (ms), median (lowest Q1–highest Q3)"
# A latency whose spread passes this multiple of its median was measured on a busy machine.
WILD_SPREAD = 2.0
_GROUP_KEYS = ("_config", "task", "method", "criterion", "step")
# Keys of a resolved config.toml that do not make two runs different experiments.
_NOT_EXPERIMENT_KEYS = ("spa_version", "output_dir", "seeds")


def _score_header(rows: Sequence[AggregateRow]) -> str:
    """The score column's header: in percent unless a row's metric has its own unit."""
    if all(metric_scale(row.metric_name) == 100.0 for row in rows):
        return "Score (%)"
    return "Score"


@dataclass(frozen=True)
class AggregateRow:
    """One table row: a (run, task, method, criterion, density step) over all its seeds.

    Args:
        run: the run directory (or directories, comma-separated) the row comes from.
        task: data set / task label.
        method: learning method label, e.g. "SPLoRA r8".
        criterion: pruning criterion.
        step: density step index (0 = unpruned).
        target_density: the density the step pruned to.
        seeds: seeds aggregated.
        mean: mean of each numeric column.
        std: sample standard deviation of each column (0 for a single seed).
        metric_name: name of the `metric` column's metric (e.g. "accuracy", "f1").
        latency: `(median, low, high)` ms: the median of the seeds' median latencies, the
            lowest first and the highest third quartile; None if not measured.
        num_classes: classes of the task (for the chance level), if the records give it.
    """

    run: str
    task: str
    method: str
    criterion: str
    step: int
    target_density: float
    seeds: tuple[int, ...]
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    metric_name: str = "accuracy"
    latency: tuple[float, float, float] | None = None
    num_classes: int | None = None


def _experiment_id(run_dir: Path) -> str:
    """What makes a run's experiment: its resolved config without where and with which seeds."""
    path = run_dir / "config.toml"
    if not path.is_file():
        return f"run:{run_dir.resolve()}"  # unknown config: the run is its own experiment
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the run's config ({error})") from None
    for key in _NOT_EXPERIMENT_KEYS:
        config.pop(key, None)
    text = json.dumps(config, sort_keys=True, default=str)
    return "config:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Short names for the runs: directory names when they are unique, else the paths given."""
    names = [path.name or str(path) for path in run_dirs]
    return names if len(set(names)) == len(names) else [str(path) for path in run_dirs]


def density_records(run_dirs: Iterable[str | Path]) -> list[dict[str, Any]]:
    """All per-density records of the given run directories, labelled with their run.

    Each record gains `_run` (a short name of its run directory) and `_config` (an id of the
    run's resolved config, so runs of different experiments are never aggregated together).

    Raises:
        ConfigError: if a directory holds no `seed-*/metrics.jsonl` or is given twice (naming
            the directory).
    """
    run_dirs = [Path(run_dir) for run_dir in run_dirs]
    seen: dict[Path, Path] = {}
    for run_dir in run_dirs:
        resolved = run_dir.resolve()
        if resolved in seen:
            raise ConfigError(
                f"{run_dir}: the same run is given twice (also as {seen[resolved]}); each seed "
                "counts once, give every run directory once"
            )
        seen[resolved] = run_dir
    records = []
    for run_dir, label in zip(run_dirs, _run_labels(run_dirs), strict=True):
        files = sorted(run_dir.glob("seed-*/metrics.jsonl"))
        if not files:
            raise ConfigError(f"{run_dir}: no seed-*/metrics.jsonl found; is this a run directory?")
        experiment = _experiment_id(run_dir)
        for path in files:
            for record in read_jsonl(path):
                if record.get("event") == "density":
                    records.append({**record, "_run": label, "_config": experiment})
    return records


def _value(record: dict[str, Any], column: str) -> Any:
    if column == "metric" and "metric" not in record:
        return record.get("accuracy")  # runs recorded before metric names
    return record.get(column)


def _latency(members: Sequence[dict[str, Any]]) -> tuple[float, float, float] | None:
    measured = [m for m in members if m.get("latency_ms") is not None]
    if not measured:
        return None
    median = statistics.median(float(m["latency_ms"]) for m in measured)
    low = min(float(m.get("latency_q1_ms", m["latency_ms"])) for m in measured)
    high = max(float(m.get("latency_q3_ms", m["latency_ms"])) for m in measured)
    return median, low, high


def aggregate(records: Sequence[dict[str, Any]]) -> list[AggregateRow]:
    """Group density records by (experiment, task, method, criterion, step); mean ± std over seeds.

    Records without `_config` / `_run` (not read by `density_records`) form one experiment.

    Args:
        records: per-seed density records.

    Returns:
        Rows sorted by task, run, then decreasing density.

    Raises:
        ConfigError: if one seed appears twice in a group (it would be counted twice), naming
            the seed and the runs it comes from.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in records:
        key = tuple(record.get(k, "") if k == "_config" else record[k] for k in _GROUP_KEYS)
        groups.setdefault(key, []).append(record)
    rows = []
    for key, members in groups.items():
        _, task, method, criterion, step = key
        seeds = [m["seed"] for m in members]
        duplicate = next((seed for seed in seeds if seeds.count(seed) > 1), None)
        if duplicate is not None:
            runs = sorted({str(m.get("_run", "?")) for m in members if m["seed"] == duplicate})
            raise ConfigError(
                f"seed {duplicate} of {task} {method} ({criterion}) appears twice (runs: "
                f"{', '.join(runs)}); a seed counts once: give each run of an experiment once, "
                "with distinct seeds"
            )
        mean, std = {}, {}
        for column, *_ in _COLUMNS:
            values = [float(_value(m, column)) for m in members if _value(m, column) is not None]
            if not values:
                continue
            mean[column] = statistics.fmean(values)
            std[column] = statistics.stdev(values) if len(values) > 1 else 0.0
        runs = sorted({str(m["_run"]) for m in members if "_run" in m})
        rows.append(
            AggregateRow(
                run=", ".join(runs) or "-",
                task=task,
                method=method,
                criterion=criterion,
                step=step,
                target_density=float(members[0]["target_density"]),
                seeds=tuple(sorted(seeds)),
                mean=mean,
                std=std,
                metric_name=str(members[0].get("metric_name", "accuracy")),
                latency=_latency(members),
                num_classes=members[0].get("num_classes"),
            )
        )
    rows.sort(key=lambda r: (r.task, r.run, r.method, r.criterion, -r.target_density))
    return rows


def _cell(row: AggregateRow, column: str, scale: float, decimals: int, percent: bool) -> str:
    if column not in row.mean:
        return "-"
    if column == "metric":
        scale = metric_scale(row.metric_name)
    text = f"{row.mean[column] * scale:,.{decimals}f}"
    if len(row.seeds) > 1:
        text += f" ± {row.std[column] * scale:,.{decimals}f}"
    if column == "metric" and scale == 100.0 and not percent:
        text += " %"  # percentages next to unscaled metrics in one column
    return text


def _latency_cell(row: AggregateRow) -> str:
    if row.latency is None:
        return "-"
    median, low, high = row.latency
    mark = " !" if is_wild(row.latency) else ""
    return f"{median:,.2f} ({low:,.2f}–{high:,.2f}){mark}"


def is_wild(latency: tuple[float, float, float]) -> bool:
    """Whether a `(median, low, high)` latency spreads wider than `WILD_SPREAD` x its median."""
    median, low, high = latency
    return high - low > WILD_SPREAD * median


def _seeds_text(row: AggregateRow) -> str:
    """The seed ids, space-separated (the same in the Markdown and the CSV table)."""
    return " ".join(map(str, row.seeds))


def markdown_table(rows: Sequence[AggregateRow]) -> str:
    """The rows as a Markdown table shaped like the paper's Table 1 (mean ± std over seeds)."""
    score = _score_header(rows)
    headers = ["Run", "Task", "Method", "Criterion"]
    headers += [score if c == "metric" else header for c, header, *_ in _COLUMNS]
    headers += [_LATENCY_HEADER, "Metric", "n", "Seeds"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    percent = score == "Score (%)"
    for row in rows:
        cells = [row.run, row.task, row.method, row.criterion]
        cells += [_cell(row, c, s, d, percent) for c, _, s, d in _COLUMNS]
        cells += [_latency_cell(row), row.metric_name, str(len(row.seeds)), _seeds_text(row)]
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        "\nRun: the run directory each row comes from (runs of one config are aggregated). "
        "Density: fraction of prunable weights kept. dParams: learned parameters of the task. "
        "FLOPs and MACs per example (an image, or a sequence of a language model) of the "
        "compacted model (1 MAC = 2 FLOPs). "
        "Score: the task's metric (named in the Metric column; accuracy and F1 in percent, "
        "perplexity as it is, lower is better). "
        "Values are mean ± sample std over the n seeds listed under Seeds (their ids). CPU "
        "latency of the compacted model: median over timed runs and seeds, with the range from "
        "the seeds' lowest first quartile to their highest third quartile (not an IQR)."
    )
    wild = [row for row in rows if row.latency is not None and is_wild(row.latency)]
    if wild:
        note += (
            f" ! marks {len(wild)} latency figure(s) spread wider than {WILD_SPREAD:g}x their "
            "median: the machine was busy while they were timed; rerun on an idle machine "
            "before comparing them."
        )
        logger.warning(
            "%d latency figure(s) spread wider than %gx their median (the machine was busy); "
            "rerun on an idle machine before comparing latencies",
            len(wild),
            WILD_SPREAD,
        )
    return "\n".join(lines) + "\n" + note + "\n"


def csv_table(rows: Sequence[AggregateRow]) -> str:
    """The rows as CSV with raw units, separate `_mean` / `_std` columns and the seed ids."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["run", "task", "method", "criterion", "step", "target_density"]
    header += ["num_seeds", "seeds", "metric_name"]
    for column, *_ in _COLUMNS:
        header += [f"{column}_mean", f"{column}_std"]
    header += ["latency_ms_median", "latency_ms_low", "latency_ms_high"]
    writer.writerow(header)
    for row in rows:
        cells: list[Any] = [row.run, row.task, row.method, row.criterion, row.step]
        cells += [row.target_density, len(row.seeds), _seeds_text(row), row.metric_name]
        for column, *_ in _COLUMNS:
            cells += [row.mean.get(column, ""), row.std.get(column, "")]
        cells += list(row.latency) if row.latency is not None else ["", "", ""]
        writer.writerow(cells)
    return buffer.getvalue()


@dataclass(frozen=True)
class ReportFiles:
    """Files written by `write_report`.

    Args:
        markdown: the Markdown table.
        csv: the CSV table.
        plots: the PNG plots.
        rows: the aggregated rows.
        structure: `structure.md` and `plots/structure.png` (where the budget went), if the
            records have it.
    """

    markdown: Path
    csv: Path
    plots: tuple[Path, ...]
    rows: tuple[AggregateRow, ...]
    structure: tuple[Path, ...] = ()


def write_report(run_dirs: Sequence[str | Path], output_dir: str | Path) -> ReportFiles:
    """Rebuild the table (Markdown + CSV) and the plots from finished run directories.

    Args:
        run_dirs: run directories to compare (each with `seed-*/metrics.jsonl`).
        output_dir: where `table.md`, `table.csv` and `plots/*.png` are written.

    Returns:
        The written files and the rows.

    Raises:
        ConfigError: if a directory is not a run directory or holds no density results.
    """
    records = density_records(run_dirs)
    if not records:
        raise ConfigError(f"no density results in {', '.join(map(str, run_dirs))}")
    rows = aggregate(records)
    output_dir = Path(output_dir)
    markdown, table = output_dir / "table.md", output_dir / "table.csv"
    atomic_write_text(markdown, markdown_table(rows))
    atomic_write_text(table, csv_table(rows))
    plots = write_plots(rows, output_dir / "plots")
    structure = write_structure(records, output_dir)
    logger.info("wrote %s, %s and %d plots", markdown, table, len(plots))
    return ReportFiles(
        markdown=markdown,
        csv=table,
        plots=tuple(plots),
        rows=tuple(rows),
        structure=tuple(structure),
    )
