"""The report's plots (paper's Fig. 6): score vs dParams, score vs FLOPs, dParams vs density.

The score is each task's metric (accuracy, F1, perplexity, ...), in percent for fractions and as
it is for perplexity; the files are named for it (`perplexity_vs_dparams.png` for language
models, `score_vs_*` when a report mixes metrics; `PLOT_FILES` holds the accuracy names).
Written for a reader: every plot has a title, a legend outside the data, one colour per series
and one marker and line style per learning method, readable tick labels on log axes, a dotted
chance line per classification task (from the `num_classes` the runner records), and, where
curves coincide (dParams vs density of one method on tasks of equal size), markers of decreasing
size and lines of decreasing width so every curve stays visible.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from spa.experiments.files import atomic_write_bytes

if TYPE_CHECKING:
    from spa.experiments.report import AggregateRow

# Metrics recorded in their own unit (not as a fraction), shown unscaled; lower is better.
_UNSCALED_METRICS = ("perplexity",)
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_LINESTYLES = ("-", "--", "-.", ":")


@dataclass(frozen=True)
class _Plot:
    filename: str
    title: str
    x_key: str
    x_scale: float
    x_label: str
    y_key: str
    y_scale: float
    y_label: str
    log_x: bool = False
    log_y: bool = False
    coinciding: bool = False  # curves may lie on each other: ringed markers keep them visible


_PLOTS = (
    _Plot(
        "accuracy_vs_dparams.png",
        "{metric} vs learned parameters per task",
        "dparams",
        1.0,
        "dParams (learned parameters per task, log scale)",
        "metric",
        100.0,
        "Test {metric} (%)",
        log_x=True,
    ),
    _Plot(
        "accuracy_vs_flops.png",
        "{metric} vs compute of the compacted model",
        "flops",
        1e-6,
        "MFLOPs per example (1 MAC = 2 FLOPs)",
        "metric",
        100.0,
        "Test {metric} (%)",
    ),
    _Plot(
        "dparams_vs_density.png",
        "Learned parameters vs density",
        "density",
        100.0,
        "Density (% of prunable weights kept)",
        "dparams",
        1.0,
        "dParams (log scale)",
        log_y=True,
        coinciding=True,
    ),
)


def metric_scale(metric_name: str) -> float:
    """Display scale of a metric: 100 for fractions (accuracy, F1) shown in percent, 1 for
    metrics in their own unit (perplexity)."""
    return 1.0 if metric_name in _UNSCALED_METRICS else 100.0


def series(rows: Sequence[AggregateRow]) -> dict[tuple[str, str, str, str], list[AggregateRow]]:
    """Rows per curve: one curve per (run, task, method, criterion), in decreasing density."""
    grouped: dict[tuple[str, str, str, str], list[AggregateRow]] = {}
    for row in rows:
        grouped.setdefault((row.run, row.task, row.method, row.criterion), []).append(row)
    for members in grouped.values():
        members.sort(key=lambda r: -r.target_density)
    return grouped


def series_labels(keys: Sequence[tuple[str, str, str, str]]) -> list[str]:
    """Legend labels naming the parts of (run, task, method, criterion) that tell curves apart.

    The run is named only when task, method and criterion alone do not tell two curves apart.
    """
    if not keys:
        return []
    varying = [i for i in (1, 2, 3) if len({k[i] for k in keys}) > 1]
    if len({tuple(k[i] for i in varying) for k in keys}) < len(keys):
        varying = [0, *varying]
    varying = varying or [2]  # a single curve is named by its method
    return [" · ".join(k[i] for i in varying) for k in keys]


def chance_levels(rows: Sequence[AggregateRow]) -> dict[str, float]:
    """Chance accuracy (1 / classes) of each accuracy-scored task that records its class count."""
    levels = {}
    for row in rows:
        classes = row.num_classes
        if row.metric_name == "accuracy" and classes is not None and classes >= 2:
            levels[row.task] = 1.0 / classes
    return levels


def _log_axis(axis) -> None:
    """Plain numbers with K/M suffixes at major ticks only, so labels never overlap."""
    from matplotlib import ticker

    axis.set_major_locator(ticker.LogLocator(base=10.0, subs=(1.0, 2.0, 5.0), numticks=12))
    axis.set_major_formatter(ticker.EngFormatter(sep=""))
    axis.set_minor_locator(ticker.LogLocator(base=10.0, subs="auto", numticks=12))
    axis.set_minor_formatter(ticker.NullFormatter())


def _line_style(plot: _Plot, index: int, count: int) -> dict[str, object]:
    if not plot.coinciding:
        return {"markersize": 5, "linewidth": 1.6}
    # Earlier curves get larger, hollow markers and wider lines: a later curve drawn on top of
    # an equal one leaves a visible ring around its marker and a band around its line.
    hollow = index < count - 1
    return {
        "linewidth": 1.2 + 1.3 * (count - 1 - index),
        "alpha": 0.9,
        "markersize": 4 + 2.5 * (count - 1 - index),
        "markerfacecolor": "none" if hollow else f"C{index % 10}",
        "markeredgewidth": 1.4,
    }


def _draw(axes, plot: _Plot, rows: Sequence[AggregateRow]) -> None:
    grouped = series(rows)
    keys = list(grouped)
    labels = series_labels(keys)
    methods = sorted({key[2] for key in keys})
    count = len(keys)
    for index, (key, label) in enumerate(zip(keys, labels, strict=True)):
        members = [m for m in grouped[key] if plot.x_key in m.mean and plot.y_key in m.mean]
        if not members:
            continue
        style = methods.index(key[2])
        y_scales = [_y_scale(plot, m) for m in members]
        axes.errorbar(
            [m.mean[plot.x_key] * plot.x_scale for m in members],
            [m.mean[plot.y_key] * scale for m, scale in zip(members, y_scales, strict=True)],
            xerr=[m.std[plot.x_key] * plot.x_scale for m in members],
            yerr=[m.std[plot.y_key] * scale for m, scale in zip(members, y_scales, strict=True)],
            color=f"C{index % 10}",
            marker=_MARKERS[style % len(_MARKERS)],
            linestyle=_LINESTYLES[style % len(_LINESTYLES)],
            **_line_style(plot, index, count),
            capsize=2,
            label=label,
        )
    if plot.y_key == "metric":
        for task, level in sorted(chance_levels(rows).items()):
            axes.axhline(100.0 * level, color="0.45", linestyle=":", linewidth=1.2)
            axes.annotate(
                f"chance {task.split('/')[-1]} ({100 * level:.0f}%)",
                xy=(0.0, 100.0 * level),
                xycoords=("axes fraction", "data"),
                xytext=(4, 2),
                textcoords="offset points",
                ha="left",
                va="bottom",
                fontsize=8,
                color="0.3",
                bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "alpha": 0.7, "lw": 0},
            )
    if plot.log_x:
        axes.set_xscale("log")
        _log_axis(axes.xaxis)
    if plot.log_y:
        axes.set_yscale("log")
        _log_axis(axes.yaxis)


def _y_scale(plot: _Plot, row: AggregateRow) -> float:
    """The plot's y scale; a metric's own (percent for fractions, 1 for perplexity)."""
    return metric_scale(row.metric_name) if plot.y_key == "metric" else plot.y_scale


def _y_label(plot: _Plot, rows: Sequence[AggregateRow]) -> str:
    label = plot.y_label.format(metric=_metric_label(rows))
    if plot.y_key == "metric" and any(_y_scale(plot, row) != 100.0 for row in rows):
        label = label.replace(" (%)", "")
        if {row.metric_name for row in rows} == {"perplexity"}:
            label += " (lower is better)"
    return label


def _metric_label(rows: Sequence[AggregateRow]) -> str:
    """The rows' metric name ("accuracy", "f1", ...), or "score" when they mix metrics."""
    names = {row.metric_name for row in rows}
    if len(names) != 1:
        return "score"
    (name,) = names
    return {"f1": "F1"}.get(name, name)


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


PLOT_FILES = tuple(plot.filename for plot in _PLOTS)


def make_figure(filename: str, rows: Sequence[AggregateRow]):
    """The matplotlib figure of one plot (by its file name in `PLOT_FILES`); the caller closes it.

    Args:
        filename: e.g. "accuracy_vs_dparams.png".
        rows: aggregated rows.

    Returns:
        The figure, laid out and ready to save.
    """
    pyplot = _pyplot()
    (plot,) = [p for p in _PLOTS if p.filename == filename]
    legend_rows = max(1, (len(series(rows)) + 1) // 2)
    figure, axes = pyplot.subplots(figsize=(7.2, 4.8 + 0.22 * legend_rows))
    _draw(axes, plot, rows)
    axes.set_title(plot.title.format(metric=_metric_label(rows).capitalize()), fontsize=12)
    axes.set_xlabel(plot.x_label, fontsize=10)
    axes.set_ylabel(_y_label(plot, rows), fontsize=10)
    axes.grid(True, which="major", alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    figure.tight_layout()
    return figure


def write_plots(rows: Sequence[AggregateRow], folder: str | Path) -> list[Path]:
    """Score vs dParams, score vs FLOPs and dParams vs density as PNG (paper's Fig. 6).

    Args:
        rows: aggregated rows.
        folder: where the PNG files go.

    Returns:
        The written files.
    """
    pyplot = _pyplot()
    folder = Path(folder)
    written = []
    for filename in PLOT_FILES:
        figure = make_figure(filename, rows)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=120)
        pyplot.close(figure)
        path = folder / plot_file_name(filename, rows)
        atomic_write_bytes(path, buffer.getvalue())
        written.append(path)
    return written


def plot_file_name(filename: str, rows: Sequence[AggregateRow]) -> str:
    """The file a plot of `PLOT_FILES` is written to: named for the rows' metric.

    Args:
        filename: a name from `PLOT_FILES` (e.g. "accuracy_vs_dparams.png").
        rows: aggregated rows.

    Returns:
        e.g. "perplexity_vs_dparams.png" for language models; `filename` for accuracy.
    """
    if not filename.startswith("accuracy_"):
        return filename
    return filename.replace("accuracy", _metric_label(rows).lower(), 1)
