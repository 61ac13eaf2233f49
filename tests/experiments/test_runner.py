"""Tests for the experiment runner: run directory, seeds, resume after an interruption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from spa.errors import ConfigError
from spa.experiments.config import from_dict
from spa.experiments.runner import run
from spa.tasks import load_task


class Interrupted(Exception):
    """Raised by a step hook to simulate a kill after a checkpoint."""


def _config(output: Path, **sections) -> dict:
    data = {
        "name": "tiny",
        "seeds": [0],
        "output_dir": str(output),
        "model": {"name": "tiny_convnet", "options": {"width": 4}},
        "data": {"name": "digits", "options": {"task": "parity", "size": 8}, "batch_size": 16},
        "adapter": {"kind": "splora", "rank": 2},
        "pruning": {"criterion": "taylor", "densities": [0.6, 0.3], "scoring_batches": 1},
        "train": {
            "initial_epochs": 1,
            "epochs_per_step": 2,
            "max_batches_per_epoch": 2,
            "lr": 0.05,
        },
    }
    for section, values in sections.items():
        if (
            isinstance(values, dict) and section in data and section != "adapter"
        ):  # a kind's table is given whole
            data[section] = {**data[section], **values}
        else:
            data[section] = values
    return data


def _comparable(records) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("latency_")} for r in records]


@pytest.fixture(scope="module")
def two_seed_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    config = from_dict(_config(folder, seeds=[0, 1]))
    return run(config, folder)


@pytest.mark.slow
def test_run_writes_run_directory(two_seed_run) -> None:
    folder = two_seed_run.run_dir
    assert (folder / "config.toml").read_text().startswith("spa_version = ")
    assert "seed 0 step 2" in (folder / "run.log").read_text()
    for seed in (0, 1):
        steps = sorted(p.name for p in (folder / f"seed-{seed}").glob("step-*"))
        assert steps == ["step-00-density-1.000", "step-01-density-0.600", "step-02-density-0.300"]
        for step in steps:
            assert (folder / f"seed-{seed}" / step / "task.safetensors").stat().st_size > 0
            assert json.loads((folder / f"seed-{seed}" / step / "metrics.json").read_text())
    assert (folder / "table.md").exists() and (folder / "table.csv").exists()
    assert len(list((folder / "plots").glob("*.png"))) == 3 + 1  # + structure.png
    assert "| 100% | 60% | 30% |" in (folder / "structure.md").read_text()


@pytest.mark.slow
def test_run_records_density_steps_in_order(two_seed_run) -> None:
    records = [r for r in two_seed_run.records if r["seed"] == 0]
    assert [r["target_density"] for r in records] == [1.0, 0.6, 0.3]
    for record in records:
        assert record["density"] == pytest.approx(record["target_density"], abs=0.08)
        assert record["macs"] * 2 == record["flops"]
    assert records[0]["flops"] > records[-1]["flops"]
    assert records[0]["dparams"] > records[-1]["dparams"]


@pytest.mark.slow
def test_run_aggregates_seeds_as_mean_and_std(two_seed_run) -> None:
    rows = two_seed_run.report.rows
    assert len(rows) == 3
    assert all(row.seeds == (0, 1) for row in rows)
    by_step = {}
    for record in two_seed_run.records:
        assert record["metric_name"] == "accuracy" and record["metric"] == record["accuracy"]
        by_step.setdefault(record["step"], []).append(record["accuracy"])
    for row in rows:
        values = by_step[row.step]
        assert row.mean["metric"] == pytest.approx(sum(values) / 2)
        assert row.std["metric"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    assert " ± " in two_seed_run.report.markdown.read_text()


@pytest.mark.slow
def test_run_bundle_reloads_with_recorded_accuracy(two_seed_run) -> None:
    from spa.data import load_dataset
    from spa.models import create_model

    record = two_seed_run.records[2]
    torch.manual_seed(record["seed"])  # the base of a run without weights is its seeded init
    base = create_model("tiny_convnet", num_classes=2, in_channels=1, width=4)
    task = load_task(base, two_seed_run.run_dir / f"seed-{record['seed']}" / record["bundle"])
    test = load_dataset("digits", None, "test", task="parity", size=8)
    images = torch.stack([test[i][0] for i in range(len(test))])
    labels = torch.tensor([test[i][1] for i in range(len(test))])
    with torch.no_grad():
        accuracy = (task(images).argmax(dim=1) == labels).float().mean().item()
    assert accuracy == pytest.approx(record["accuracy"], abs=1e-6)


@pytest.mark.slow
def test_run_again_is_a_no_op_returning_the_same_records(two_seed_run) -> None:
    config = from_dict(_config(two_seed_run.run_dir, seeds=[0, 1]))
    again = run(config, two_seed_run.run_dir)
    assert again.records == two_seed_run.records


@pytest.mark.slow
def test_run_refuses_a_directory_of_another_config(two_seed_run) -> None:
    config = from_dict(_config(two_seed_run.run_dir, seeds=[0, 1], train={"lr": 0.5}))
    with pytest.raises(ConfigError, match=r"different config \(key 'train\.lr' differs\)"):
        run(config, two_seed_run.run_dir)


@pytest.mark.slow
@pytest.mark.parametrize(
    "adapter", [{"kind": "splora", "rank": 2}, {"method": "fine-pruning"}], ids=["splora", "old"]
)
def test_run_resumed_after_interruption_equals_uninterrupted(tmp_path: Path, adapter) -> None:
    config = from_dict(_config(tmp_path, adapter=adapter))
    reference = run(config, tmp_path / "reference")

    def interrupt(seed: int, step: int, record: dict) -> None:
        if step == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        run(config, tmp_path / "resumed", step_hook=interrupt)
    # A torn, partial step after the checkpoint (as a kill leaves it) must be dropped.
    metrics = tmp_path / "resumed" / "seed-0" / "metrics.jsonl"
    with metrics.open("a") as file:
        file.write(json.dumps({"event": "epoch", "step": 2, "epoch": 0}) + '\n{"event": ')
    steps_seen = []
    resumed = run(config, tmp_path / "resumed", step_hook=lambda s, k, r: steps_seen.append(k))
    assert steps_seen == [2]
    assert _comparable(resumed.records) == _comparable(reference.records)
    epochs = [
        (r["step"], r["epoch"], r["loss"])
        for r in map(json.loads, metrics.read_text().splitlines())
        if r["event"] == "epoch"
    ]
    reference_metrics = tmp_path / "reference" / "seed-0" / "metrics.jsonl"
    expected = [
        (r["step"], r["epoch"], r["loss"])
        for r in map(json.loads, reference_metrics.read_text().splitlines())
        if r["event"] == "epoch"
    ]
    assert epochs == expected
    for step in ("step-01-density-0.600", "step-02-density-0.300"):
        ours = (tmp_path / "resumed" / "seed-0" / step / "task.safetensors").read_bytes()
        theirs = (tmp_path / "reference" / "seed-0" / step / "task.safetensors").read_bytes()
        assert ours == theirs


@pytest.mark.slow
def test_run_lora_trains_without_pruning(tmp_path: Path) -> None:
    adapter = {"kind": "lora", "rank": 2}
    config = from_dict(_config(tmp_path, adapter=adapter, pruning={"schedule": "none"}))
    result = run(config, tmp_path)
    (record,) = result.records
    assert record["method"] == "LoRA r2" and record["criterion"] == "-"
    assert record["density"] == 1.0


def test_run_block_pruning_config_is_not_yet_supported(tmp_path: Path) -> None:
    config = from_dict(
        _config(tmp_path, adapter={"kind": "splopa"}, pruning={"criterion": "movement"})
    )
    with pytest.raises(ConfigError, match=r"'adapter\.kind' = 'splopa': not supported for image"):
        run(config, tmp_path)
    assert not (tmp_path / "config.toml").exists()


def test_run_old_block_fine_pruning_config_is_not_yet_supported(tmp_path: Path) -> None:
    config = from_dict(
        _config(tmp_path, adapter={"method": "fine-pruning"}, pruning={"criterion": "l0"})
    )
    with pytest.raises(ConfigError, match=r"'adapter\.kind' = 'block_fine_pruning': not supp"):
        run(config, tmp_path)
