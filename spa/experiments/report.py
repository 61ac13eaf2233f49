"""Result tables (Markdown + CSV, mean ± std over seeds) and plots from finished run directories.

Every run directory holds `seed-*/metrics.jsonl`; its `"event": "density"` records (one per
density step, written by the runner) are all a report needs. Tables always put density, dParams
and FLOPs side by side and label FLOPs and MACs explicitly (1 MAC = 2 FLOPs). The score column is
the task type's metric (`metric`, named by `metric_name`: accuracy, F1, ...; runs recorded
before metric names read `accuracy`). Latency is the median of timed runs with the interquartile
range, never a mean ± std (one disturbed run would dominate it).
"""

from __future__ import annotations

import csv
import io
import logging
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spa.errors import ConfigError
from spa.experiments.files import atomic_write_bytes, atomic_write_text, read_jsonl

logger = logging.getLogger(__name__)

# Numeric columns aggregated over seeds: (record key, table header, scale, decimals).
_COLUMNS = (
    ("density", "Density (%)", 100.0, 1),
    ("dparams", "dParams (K)", 1e-3, 1),
    ("flops", "MFLOPs", 1e-6, 2),
    ("macs", "MMACs", 1e-6, 2),
    ("metric", "Score (%)", 100.0, 2),
    ("bundle_bytes", "Bundle (KiB)", 1 / 1024, 1),
)
_LATENCY_HEADER = "CPU latency (ms), median (IQR)"
_GROUP_KEYS = ("task", "method", "criterion", "step")


@dataclass(frozen=True)
class AggregateRow:
    """One table row: a (task, method, criterion, density step) over all its seeds.

    Args:
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
    """

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


def density_records(run_dirs: Iterable[str | Path]) -> list[dict[str, Any]]:
    """All per-density records of the given run directories.

    Raises:
        ConfigError: if a directory holds no `seed-*/metrics.jsonl` (naming the directory).
    """
    records = []
    for run_dir in run_dirs:
        files = sorted(Path(run_dir).glob("seed-*/metrics.jsonl"))
        if not files:
            raise ConfigError(f"{run_dir}: no seed-*/metrics.jsonl found; is this a run directory?")
        for path in files:
            records += [r for r in read_jsonl(path) if r.get("event") == "density"]
    return records


def aggregate(records: Sequence[dict[str, Any]]) -> list[AggregateRow]:
    """Group density records by (task, method, criterion, step) and take mean ± std over seeds.

    Args:
        records: per-seed density records.

    Returns:
        Rows sorted by task, then decreasing density, then method.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(tuple(record[k] for k in _GROUP_KEYS), []).append(record)
    rows = []
    for key, members in groups.items():
        task, method, criterion, step = key
        mean, std = {}, {}
        for column, *_ in _COLUMNS:
            values = [float(_value(m, column)) for m in members if _value(m, column) is not None]
            if not values:
                continue
            mean[column] = statistics.fmean(values)
            std[column] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(
            AggregateRow(
                task=task,
                method=method,
                criterion=criterion,
                step=step,
                target_density=float(members[0]["target_density"]),
                seeds=tuple(sorted(m["seed"] for m in members)),
                mean=mean,
                std=std,
                metric_name=str(members[0].get("metric_name", "accuracy")),
                latency=_latency(members),
            )
        )
    rows.sort(key=lambda r: (r.task, -r.target_density, r.method, r.criterion))
    return rows


def _cell(row: AggregateRow, column: str, scale: float, decimals: int) -> str:
    if column not in row.mean:
        return "-"
    text = f"{row.mean[column] * scale:,.{decimals}f}"
    if len(row.seeds) > 1:
        text += f" ± {row.std[column] * scale:,.{decimals}f}"
    return text


def _latency_cell(row: AggregateRow) -> str:
    if row.latency is None:
        return "-"
    median, low, high = row.latency
    return f"{median:,.2f} ({low:,.2f}–{high:,.2f})"


def markdown_table(rows: Sequence[AggregateRow]) -> str:
    """The rows as a Markdown table shaped like the paper's Table 1 (mean ± std over seeds)."""
    headers = ["Task", "Method", "Criterion"] + [c[1] for c in _COLUMNS]
    headers += [_LATENCY_HEADER, "Metric", "Seeds"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [row.task, row.method, row.criterion]
        cells += [_cell(row, c, s, d) for c, _, s, d in _COLUMNS]
        cells += [_latency_cell(row), row.metric_name, str(len(row.seeds))]
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        "\nDensity: fraction of prunable weights kept. dParams: learned parameters of the task. "
        "FLOPs and MACs per example of the compacted model (1 MAC = 2 FLOPs). "
        "Score: the task's metric (named in the Metric column). "
        "Values are mean ± sample std over seeds; latency is the median over timed runs (and "
        "seeds) with the interquartile range."
    )
    return "\n".join(lines) + "\n" + note + "\n"


def csv_table(rows: Sequence[AggregateRow]) -> str:
    """The rows as CSV with raw units and separate `_mean` / `_std` columns."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["task", "method", "criterion", "step", "target_density", "seeds", "metric_name"]
    for column, *_ in _COLUMNS:
        header += [f"{column}_mean", f"{column}_std"]
    header += ["latency_ms_median", "latency_ms_low", "latency_ms_high"]
    writer.writerow(header)
    for row in rows:
        cells: list[Any] = [row.task, row.method, row.criterion, row.step, row.target_density]
        cells += [" ".join(map(str, row.seeds)), row.metric_name]
        for column, *_ in _COLUMNS:
            cells += [row.mean.get(column, ""), row.std.get(column, "")]
        cells += list(row.latency) if row.latency is not None else ["", "", ""]
        writer.writerow(cells)
    return buffer.getvalue()


def _series(rows: Sequence[AggregateRow]) -> dict[str, list[AggregateRow]]:
    series: dict[str, list[AggregateRow]] = {}
    for row in rows:
        label = f"{row.task} ({row.metric_name}) · {row.method} · {row.criterion}"
        series.setdefault(label, []).append(row)
    return series


def write_plots(rows: Sequence[AggregateRow], folder: str | Path) -> list[Path]:
    """Score vs dParams, score vs FLOPs and dParams vs density as PNG (paper's Fig. 6); the score
    is each task's metric (accuracy, F1, ...), named in the legend.

    Args:
        rows: aggregated rows.
        folder: where the PNG files go.

    Returns:
        The written files.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    folder = Path(folder)
    plots = (
        ("accuracy_vs_dparams.png", "dparams", 1.0, "metric", 100.0, "dParams", "Score (%)"),
        ("accuracy_vs_flops.png", "flops", 1e-6, "metric", 100.0, "MFLOPs", "Score (%)"),
        ("dparams_vs_density.png", "density", 100.0, "dparams", 1.0, "Density (%)", "dParams"),
    )
    written = []
    for filename, x_key, x_scale, y_key, y_scale, x_label, y_label in plots:
        figure, axes = pyplot.subplots(figsize=(6.4, 4.4))
        for label, members in _series(rows).items():
            members = [m for m in members if x_key in m.mean and y_key in m.mean]
            if not members:
                continue
            axes.errorbar(
                [m.mean[x_key] * x_scale for m in members],
                [m.mean[y_key] * y_scale for m in members],
                xerr=[m.std[x_key] * x_scale for m in members],
                yerr=[m.std[y_key] * y_scale for m in members],
                marker="o",
                linestyle="--" if "Fine-pruning" in label else "-",
                markersize=3,
                capsize=2,
                label=label,
            )
        if x_key == "dparams" or y_key == "dparams":
            axes.set_xscale("log") if x_key == "dparams" else axes.set_yscale("log")
        axes.set_xlabel(x_label)
        axes.set_ylabel(y_label)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=6)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=120)
        pyplot.close(figure)
        atomic_write_bytes(folder / filename, buffer.getvalue())
        written.append(folder / filename)
    return written


@dataclass(frozen=True)
class ReportFiles:
    """Files written by `write_report`.

    Args:
        markdown: the Markdown table.
        csv: the CSV table.
        plots: the PNG plots.
        rows: the aggregated rows.
    """

    markdown: Path
    csv: Path
    plots: tuple[Path, ...]
    rows: tuple[AggregateRow, ...]


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
    logger.info("wrote %s, %s and %d plots", markdown, table, len(plots))
    return ReportFiles(markdown=markdown, csv=table, plots=tuple(plots), rows=tuple(rows))
