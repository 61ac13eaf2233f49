"""Plot files are named for what they show: perplexity plots of language models say so."""

from __future__ import annotations

import pytest

from spa.experiments.plots import PLOT_FILES, write_plots
from spa.experiments.report import AggregateRow


def _rows(metric_name: str) -> list[AggregateRow]:
    values = {"dparams": 1000.0, "flops": 2e6, "macs": 1e6, "metric": 20.0, "density": 0.5}
    return [
        AggregateRow(
            run="r",
            task="lm",
            method=method,
            criterion="weight",
            step=step,
            target_density=d,
            seeds=(0,),
            mean={**values, "density": d},
            std=dict.fromkeys(values, 0.0),
            metric_name=metric_name,
        )
        for method in ("SPLoRA r8", "fine-pruning")
        for step, d in ((0, 1.0), (1, 0.5))
    ]


@pytest.mark.parametrize(
    ("metric", "prefix"), [("perplexity", "perplexity"), ("accuracy", "accuracy"), ("f1", "f1")]
)
def test_score_plots_are_named_for_their_metric(tmp_path, metric, prefix):
    written = sorted(p.name for p in write_plots(_rows(metric), tmp_path))
    expected = sorted(n.replace("accuracy", prefix, 1) for n in PLOT_FILES)
    assert written == expected
    assert not any("accuracy" in name for name in written) or metric == "accuracy"
