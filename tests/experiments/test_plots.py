"""The report's plots as a reader sees them: titles, readable ticks, chance lines, all curves."""

from __future__ import annotations

import itertools

import pytest

from spa.experiments.plots import PLOT_FILES, chance_levels, make_figure, series_labels
from spa.experiments.report import AggregateRow

pytestmark = pytest.mark.slow  # drawing three figures takes a few seconds on 2 busy cores

# dParams of the demo's two methods (fine-pruning ~4.5K-44K, SPLoRA ~1.9K-5K): the range whose
# log-axis labels used to overlap ("3x10^3" on "4x10^3").
_CURVES = {
    ("parity-fp", "digits/parity", "Fine-pruning"): [44_286, 22_028, 4_532],
    ("parity-splora", "digits/parity", "SPLoRA r8"): [4_994, 3_866, 1_884],
    ("mod3-fp", "digits/mod3", "Fine-pruning"): [44_286, 22_028, 4_532],
    ("mod3-splora", "digits/mod3", "SPLoRA r8"): [4_994, 3_866, 1_884],
}


def _rows() -> list[AggregateRow]:
    rows = []
    for (run, task, method), dparams in _CURVES.items():
        classes = 2 if "parity" in task else 3
        for step, (density, value) in enumerate(zip((1.0, 0.5, 0.1), dparams, strict=True)):
            mean = {"density": density, "dparams": value, "flops": 1e5 * (1 + density)}
            mean["metric"] = 0.6 + 0.1 * density
            rows.append(
                AggregateRow(
                    run=run,
                    task=task,
                    method=method,
                    criterion="taylor",
                    step=step,
                    target_density=density,
                    seeds=(0,),
                    mean=mean,
                    std=dict.fromkeys(mean, 0.0),
                    num_classes=classes,
                )
            )
    return rows


@pytest.fixture(scope="module")
def figures():
    from matplotlib import pyplot

    made = {name: make_figure(name, _rows()) for name in PLOT_FILES}
    for figure in made.values():
        figure.canvas.draw()
    yield made
    for figure in made.values():
        pyplot.close(figure)


def _tick_boxes(axis, renderer):
    return [
        label.get_window_extent(renderer)
        for label in axis.get_ticklabels(which="both")
        if label.get_visible() and label.get_text()
    ]


def test_plots_have_titles_labels_and_a_legend(figures) -> None:
    for figure in figures.values():
        (axes,) = figure.axes
        assert axes.get_title() and axes.get_xlabel() and axes.get_ylabel()
        assert "{" not in axes.get_title() + axes.get_ylabel()
        legend = axes.get_legend()
        assert len(legend.get_texts()) == len(_CURVES)
        assert min(t.get_fontsize() for t in legend.get_texts()) >= 8


@pytest.mark.parametrize("name", ["accuracy_vs_dparams.png", "dparams_vs_density.png"])
def test_log_axis_tick_labels_do_not_overlap(figures, name: str) -> None:
    figure = figures[name]
    (axes,) = figure.axes
    axis = axes.xaxis if name == "accuracy_vs_dparams.png" else axes.yaxis
    boxes = _tick_boxes(axis, figure.canvas.get_renderer())
    assert len(boxes) >= 3
    for first, second in itertools.combinations(boxes, 2):
        assert not first.overlaps(second)


def test_accuracy_plots_draw_a_chance_line_per_task(figures) -> None:
    assert chance_levels(_rows()) == {"digits/parity": 0.5, "digits/mod3": pytest.approx(1 / 3)}
    for name in ("accuracy_vs_dparams.png", "accuracy_vs_flops.png"):
        (axes,) = figures[name].axes
        flat = [line.get_ydata() for line in axes.get_lines() if len(set(line.get_ydata())) == 1]
        levels = sorted(float(y[0]) for y in flat)
        assert levels == pytest.approx([100 / 3, 50.0])
        assert {t.get_text() for t in axes.texts} == {"chance parity (50%)", "chance mod3 (33%)"}
    (axes,) = figures["dparams_vs_density.png"].axes
    assert not axes.texts


def test_identical_curves_stay_visible_in_dparams_vs_density(figures) -> None:
    (axes,) = figures["dparams_vs_density.png"].axes
    curves = [container.lines[0] for container in axes.containers]  # errorbar data lines
    by_data = {}
    for line in curves:
        key = (tuple(line.get_xdata()), tuple(line.get_ydata()))
        by_data.setdefault(key, []).append(line)
    coinciding = [lines for lines in by_data.values() if len(lines) > 1]
    assert coinciding, "the fixture has curves with equal values"
    for lines in coinciding:
        sizes = [line.get_markersize() for line in lines]
        widths = [line.get_linewidth() for line in lines]
        assert len(set(sizes)) == len(lines) and len(set(widths)) == len(lines)
        # every curve but the top one has hollow markers, so the one on top shows inside it
        assert sum(line.get_markerfacecolor() == "none" for line in lines) >= len(lines) - 1


def test_accuracy_plots_name_the_metric(figures) -> None:
    (axes,) = figures["accuracy_vs_dparams.png"].axes
    assert axes.get_title() == "Accuracy vs learned parameters per task"
    assert axes.get_ylabel() == "Test accuracy (%)"


def test_series_labels_name_the_run_only_when_needed() -> None:
    keys = [("a", "digits/parity", "SPLoRA r8", "taylor"), ("b", "digits/mod3", "SPLoRA r8", "x")]
    assert series_labels(keys) == ["digits/parity · taylor", "digits/mod3 · x"]
    same = [("a", "t", "SPLoRA r8", "taylor"), ("b", "t", "SPLoRA r8", "taylor")]
    assert series_labels(same) == ["a", "b"]


def test_perplexity_plots_show_perplexity_unscaled() -> None:
    from matplotlib import pyplot

    rows = [
        AggregateRow(
            run="lm",
            task="embedded",
            method="SPLoRA r8",
            criterion="taylor",
            step=step,
            target_density=density,
            seeds=(0,),
            mean={"density": density, "dparams": 1000.0 * (1 + step), "metric": value},
            std={"density": 0.0, "dparams": 0.0, "metric": 0.0},
            metric_name="perplexity",
        )
        for step, (density, value) in enumerate(((1.0, 5.0), (0.5, 8.0)))
    ]
    figure = make_figure("accuracy_vs_dparams.png", rows)
    try:
        (axes,) = figure.axes
        assert axes.get_ylabel() == "Test perplexity (lower is better)"
        curves = [line for line in axes.get_lines() if len(line.get_ydata()) == 2]
        assert curves and all(list(line.get_ydata()) == [5.0, 8.0] for line in curves)
    finally:
        pyplot.close(figure)
