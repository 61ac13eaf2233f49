"""Tests for result tables (mean ± std over seeds) and plots."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

from spa.errors import ConfigError
from spa.experiments.files import read_jsonl
from spa.experiments.report import (
    aggregate,
    csv_table,
    density_records,
    markdown_table,
    write_report,
)


def _record(seed: int, step: int, density: float, accuracy: float, dparams: int) -> dict:
    return {
        "event": "density",
        "task": "digits/parity",
        "method": "SPLoRA r8",
        "criterion": "taylor",
        "seed": seed,
        "step": step,
        "target_density": density,
        "density": density,
        "accuracy": accuracy,
        "dparams": dparams,
        "flops": 4_000_000,
        "macs": 2_000_000,
        "bundle_bytes": 2048,
        "latency_ms": 1.5,
    }


def _write_run(folder: Path, records: list[dict]) -> Path:
    for seed in {r["seed"] for r in records}:
        path = folder / f"seed-{seed}" / "metrics.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"event": "epoch", "seed": seed, "step": 0})]
        lines += [json.dumps(r) for r in records if r["seed"] == seed]
        path.write_text("\n".join(lines) + "\n")
    return folder


def test_aggregate_mean_and_sample_std_over_seeds() -> None:
    records = [_record(0, 1, 0.5, 0.5, 100), _record(1, 1, 0.5, 0.7, 300)]
    (row,) = aggregate(records)
    assert row.seeds == (0, 1)
    assert row.mean["metric"] == pytest.approx(0.6)  # records from before metric names
    assert row.std["metric"] == pytest.approx(math.sqrt((0.1**2 + 0.1**2) / 1))
    assert row.metric_name == "accuracy"
    assert row.mean["dparams"] == pytest.approx(200)
    assert row.std["dparams"] == pytest.approx(math.sqrt(2 * 100**2))


def test_aggregate_orders_by_decreasing_density() -> None:
    rows = aggregate([_record(0, 2, 0.1, 0.5, 10), _record(0, 0, 1.0, 0.9, 30)])
    assert [r.target_density for r in rows] == [1.0, 0.1]


def test_markdown_table_labels_flops_and_macs_side_by_side() -> None:
    text = markdown_table(aggregate([_record(0, 1, 0.5, 0.5, 1000), _record(1, 1, 0.5, 0.7, 3000)]))
    header = text.splitlines()[0]
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns.index("dParams (K)") == columns.index("Density (%)") + 1
    assert columns.index("MFLOPs") == columns.index("dParams (K)") + 1
    assert "MMACs" in columns
    assert "1 MAC = 2 FLOPs" in text
    row = text.splitlines()[2]
    assert "60.00 ± 14.14" in row  # accuracy in %
    assert "2.0 ± 1.4" in row  # dParams in K
    assert "| 4.00 ± 0.00 | 2.00 ± 0.00 |" in row  # MFLOPs then MMACs


def test_csv_table_holds_raw_means_and_stds() -> None:
    rows = aggregate([_record(0, 1, 0.5, 0.5, 100), _record(1, 1, 0.5, 0.7, 300)])
    (parsed,) = list(csv.DictReader(io.StringIO(csv_table(rows))))
    assert float(parsed["metric_mean"]) == pytest.approx(0.6)
    assert parsed["metric_name"] == "accuracy"
    assert float(parsed["dparams_std"]) == pytest.approx(math.sqrt(20000))
    assert parsed["seeds"] == "0 1"
    assert parsed["num_seeds"] == "2"
    assert float(parsed["macs_mean"]) * 2 == float(parsed["flops_mean"])


def test_write_report_compares_runs_and_writes_plots(tmp_path: Path) -> None:
    first = _write_run(tmp_path / "a", [_record(0, 0, 1.0, 0.9, 50), _record(0, 1, 0.3, 0.8, 20)])
    other = dict(_record(0, 0, 1.0, 0.7, 900), method="Fine-pruning")
    second = _write_run(tmp_path / "b", [other])
    files = write_report([first, second], tmp_path / "out")
    assert {r.method for r in files.rows} == {"SPLoRA r8", "Fine-pruning"}
    assert "Fine-pruning" in files.markdown.read_text()
    assert files.csv.read_text().count("\n") == 4  # header + 3 rows
    assert {r.run for r in files.rows} == {"a", "b"}
    names = sorted(p.name for p in files.plots)
    assert names == ["accuracy_vs_dparams.png", "accuracy_vs_flops.png", "dparams_vs_density.png"]
    for path in files.plots:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_report_rejects_non_run_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no seed-\\*/metrics.jsonl found"):
        write_report([tmp_path], tmp_path / "out")


def test_read_jsonl_skips_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": ')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_read_jsonl_rejects_damaged_middle_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(ConfigError, match="line 2 is not valid JSON"):
        read_jsonl(path)


def _write_config(folder: Path, width: int, output_dir: str = "x", seeds: str = "[0]") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    text = (
        f'spa_version = "0"\nname = "e"\nseeds = {seeds}\noutput_dir = "{output_dir}"\n'
        f"[model]\noptions = {{width = {width}}}\n"
    )
    (folder / "config.toml").write_text(text)


def test_report_keeps_runs_of_different_configs_apart(tmp_path: Path) -> None:
    first = _write_run(tmp_path / "a", [_record(0, 1, 0.5, 0.6, 100)])
    second = _write_run(tmp_path / "b", [_record(1, 1, 0.5, 0.8, 300)])
    _write_config(first, width=4)
    _write_config(second, width=8)
    rows = aggregate(density_records([first, second]))
    assert [(r.run, r.seeds, r.mean["metric"]) for r in rows] == [
        ("a", (0,), 0.6),
        ("b", (1,), 0.8),
    ]
    lines = markdown_table(rows).splitlines()
    assert lines[2].startswith("| a | digits/parity |") and lines[3].startswith("| b |")


def test_report_aggregates_seeds_of_one_config_run_in_two_places(tmp_path: Path) -> None:
    first = _write_run(tmp_path / "a", [_record(0, 1, 0.5, 0.6, 100)])
    second = _write_run(tmp_path / "b", [_record(1, 1, 0.5, 0.8, 300)])
    _write_config(first, width=4, output_dir="a", seeds="[0]")
    _write_config(second, width=4, output_dir="b", seeds="[1]")
    (row,) = aggregate(density_records([first, second]))
    assert row.run == "a, b" and row.seeds == (0, 1)
    assert row.mean["metric"] == pytest.approx(0.7)


def test_report_refuses_the_same_run_given_twice(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "a", [_record(0, 1, 0.5, 0.6, 100)])
    with pytest.raises(ConfigError, match="the same run is given twice"):
        write_report([run, tmp_path / "." / "a"], tmp_path / "out")


def test_report_refuses_a_seed_counted_twice(tmp_path: Path) -> None:
    first = _write_run(tmp_path / "a", [_record(0, 1, 0.5, 0.6, 100)])
    copy = _write_run(tmp_path / "copy", [_record(0, 1, 0.5, 0.6, 100)])
    _write_config(first, width=4)
    _write_config(copy, width=4)
    with pytest.raises(
        ConfigError, match=r"seed 0 of digits/parity .* appears twice \(runs: a, copy\)"
    ):
        aggregate(density_records([first, copy]))


def test_latency_is_median_of_seed_medians_with_outer_quartiles() -> None:
    timings = ((0, 2.0, 1.5, 2.5), (1, 9.0, 3.0, 40.0), (2, 3.0, 2.8, 3.1))
    records = [
        {**_record(seed, 1, 0.5, 0.5, 100), "latency_ms": median}
        | {"latency_q1_ms": q1, "latency_q3_ms": q3}
        for seed, median, q1, q3 in timings
    ]
    (row,) = aggregate(records)
    assert row.latency == (3.0, 1.5, 40.0)  # median of 2, 9, 3; lowest q1; highest q3
    assert "| 3.00 (1.50–40.00) ! |" in markdown_table([row])
    (parsed,) = list(csv.DictReader(io.StringIO(csv_table([row]))))
    assert [float(parsed[f"latency_ms_{k}"]) for k in ("median", "low", "high")] == [3, 1.5, 40]


def test_metric_name_and_value_come_from_the_record() -> None:
    records = [
        {**_record(seed, 1, 0.5, 0.0, 100), "metric": f1, "metric_name": "f1"}
        for seed, f1 in ((0, 0.8), (1, 0.6))
    ]
    for record in records:
        del record["accuracy"]  # QA records store F1 as `metric`, never as accuracy
    (row,) = aggregate(records)
    assert row.metric_name == "f1"
    assert row.mean["metric"] == pytest.approx(0.7)
    line = markdown_table([row]).splitlines()[2]
    assert "| 70.00 ± 14.14 |" in line and "| f1 |" in line


def test_seeds_mean_the_same_in_markdown_and_csv() -> None:
    rows = aggregate([_record(3, 1, 0.5, 0.5, 100), _record(7, 1, 0.5, 0.7, 300)])
    header, _, line = markdown_table(rows).splitlines()[:3]
    names = [c.strip() for c in header.strip("|").split("|")]
    cells = dict(zip(names, [c.strip() for c in line.strip("|").split("|")], strict=True))
    assert (cells["n"], cells["Seeds"]) == ("2", "3 7")
    (parsed,) = list(csv.DictReader(io.StringIO(csv_table(rows))))
    assert (parsed["num_seeds"], parsed["seeds"]) == ("2", "3 7")


def test_perplexity_is_shown_as_it_is_next_to_percentages() -> None:
    perplexity = [
        {**_record(seed, 1, 0.5, 0.0, 100), "metric": value, "metric_name": "perplexity"}
        for seed, value in ((0, 12.5), (1, 13.5))
    ]
    for record in perplexity:
        del record["accuracy"]
    (row,) = aggregate(perplexity)
    header, _, line = markdown_table([row]).splitlines()[:3]
    assert "| Score |" in header and "Score (%)" not in header
    assert "| 13.00 ± 0.71 |" in line and "| perplexity |" in line  # not x 100
    accuracy = aggregate([{**_record(2, 1, 0.5, 0.0, 100), "task": "other", "accuracy": 0.25}])
    lines = markdown_table([row, *accuracy]).splitlines()
    assert "| 25.00 % |" in lines[3]  # a percentage in a column that is not all percent
    assert "Score (%)" in markdown_table(accuracy)
