"""The one latency statistic: median with quartiles, checked on fixed fake timings."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from spa.experiments import measure
from spa.experiments.measure import Latency, latency_statistics, measure_latency


@pytest.mark.parametrize(
    "times",
    [
        [5.0, 1.0, 3.0, 2.0, 4.0],
        [10.0, 2.0, 2.5, 3.0, 250.0, 2.2],  # one disturbed run
        [1.25, 1.5, 1.0, 8.0, 1.1, 1.3, 1.2, 1.4, 1.6, 1.7, 1.8, 1.9, 2.0, 0.9],
    ],
)
def test_latency_statistics_equal_numpy_percentiles(times: list[float]) -> None:
    q1, median, q3 = np.percentile(times, [25, 50, 75])  # linear interpolation
    result = latency_statistics(times)
    assert result.median_ms == pytest.approx(median)
    assert result.q1_ms == pytest.approx(q1)
    assert result.q3_ms == pytest.approx(q3)
    assert result.runs == len(times)


def test_one_disturbed_run_moves_neither_median_nor_quartiles_much() -> None:
    quiet = [2.0, 2.1, 2.2, 2.3, 2.4, 2.5, 2.6, 2.7, 2.8]
    disturbed = quiet[:-1] + [500.0]
    assert latency_statistics(disturbed).median_ms == latency_statistics(quiet).median_ms


def test_single_run_and_no_run() -> None:
    assert latency_statistics([3.5]) == Latency(median_ms=3.5, q1_ms=3.5, q3_ms=3.5, runs=1)
    with pytest.raises(ValueError, match="at least one"):
        latency_statistics([])


def test_record_fields_name_the_median_and_quartiles() -> None:
    record = Latency(median_ms=2.0, q1_ms=1.5, q3_ms=3.0, runs=7).record()
    assert record == {
        "latency_ms": 2.0,
        "latency_q1_ms": 1.5,
        "latency_q3_ms": 3.0,
        "latency_runs": 7,
    }


class _Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[bool] = []

    def forward(self, inputs=None, **kwargs):
        self.calls.append(self.training)
        return inputs


@pytest.mark.parametrize("keyword", [False, True])
def test_measure_latency_times_repeats_after_warmup_with_a_fake_clock(
    monkeypatch, keyword: bool
) -> None:
    durations_ms = [4.0, 1.0, 9.0, 2.0, 3.0]
    ticks, clock = [], 0.0
    for duration in durations_ms:  # (start, end) of every timed run, in seconds
        ticks += [clock, clock + duration / 1e3]
        clock += 1.0
    fake = iter(ticks)
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(fake))
    model = _Counting().train()
    inputs = {"input_ids": torch.ones(1, 3)} if keyword else torch.ones(1, 3)
    result = measure_latency(model, inputs, repeats=5, warmup=2)
    assert len(model.calls) == 7 and not any(model.calls)  # 2 warm-up + 5 timed, in eval mode
    assert model.training  # mode restored
    expected = np.percentile(durations_ms, [25, 50, 75])
    assert (result.q1_ms, result.median_ms, result.q3_ms) == pytest.approx(tuple(expected))
    assert next(itertools.chain(fake, [None])) is None  # exactly two clock reads per run
