"""A kind and a criterion that exist only in the tests run through `spa run` (classification and
causal LM), `spa report`, bundles, `spa bundle info` and `TaskHost`: nothing under `spa/` names
them (issue 20)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from spa.cli import main
from spa.experiments.toml_writer import dumps_toml
from spa.models import create_model
from spa.pruning.criteria import CRITERIA
from spa.tasks import TaskHost, load_task
from tests.contract.scaled_lowrank import SCALED_LOWRANK
from tests.experiments.test_causal_lm_run import _base, _held_out_ids, _perplexity, files

KIND = SCALED_LOWRANK.name  # registered by the tests only
CRITERION = "row_l1"  # registered by the `row_l1` fixture only
__all__ = ["files"]  # the causal-LM fixture, shared


def _row_l1(model, layers, data=None, loss_fn=None, **options) -> dict[str, torch.Tensor]:
    """L1 norm of each output channel's adapted weight."""
    weights = {
        name: layer.fused_weight() if hasattr(layer, "fused_weight") else layer.weight
        for name, layer in layers.items()
    }
    return {name: weight.detach().flatten(1).abs().sum(dim=1) for name, weight in weights.items()}


@pytest.fixture
def row_l1(monkeypatch):
    monkeypatch.setitem(CRITERIA._items, CRITERION, _row_l1)


def _write(path: Path, config: dict) -> Path:
    path.write_text(dumps_toml(config), encoding="utf-8")
    return path


def _records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "seed-0" / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "density"]


def _mlp() -> torch.nn.Module:
    return create_model("mlp", in_features=64, hidden=[16, 16], num_classes=2)


@pytest.mark.slow
def test_test_only_kind_and_criterion_run_classification_report_bundle_and_host(
    row_l1, tmp_path: Path, capsys
) -> None:
    from spa.data import load_dataset

    torch.manual_seed(0)
    base = _mlp().eval()
    torch.save(base.state_dict(), tmp_path / "base.pt")
    config = {
        "name": "open-kind",
        "output_dir": str(tmp_path / "unused"),
        "model": {
            "name": "mlp",
            "options": {"hidden": [16, 16]},
            "weights": str(tmp_path / "base.pt"),
        },
        "data": {"name": "digits", "options": {"task": "parity", "size": 8}, "batch_size": 16},
        "adapter": {"kind": KIND, "rank": 2},
        "pruning": {"criterion": CRITERION, "densities": [0.5], "scoring_batches": 1},
        "train": {
            "initial_epochs": 1,
            "epochs_per_step": 1,
            "max_batches_per_epoch": 2,
            "lr": 0.05,
        },
    }
    run_dir = tmp_path / "run"
    assert main(["run", str(_write(tmp_path / "c.toml", config)), "--output", str(run_dir)]) == 0
    written = (run_dir / "config.toml").read_text(encoding="utf-8")
    assert f'kind = "{KIND}"' in written and "method" not in written
    records = _records(run_dir)
    assert [(r["method"], r["criterion"]) for r in records] == [("Scaled r2", CRITERION)] * 2

    assert main(["report", str(run_dir), "--output", str(tmp_path / "report")]) == 0
    assert f"| Scaled r2 | {CRITERION} |" in (tmp_path / "report" / "table.md").read_text()

    bundle = run_dir / "seed-0" / records[-1]["bundle"]
    capsys.readouterr()
    assert main(["bundle", "info", str(bundle)]) == 0
    assert f": {KIND} " in capsys.readouterr().out

    test = load_dataset("digits", None, "test", task="parity", size=8)
    images = torch.stack([test[i][0] for i in range(len(test))])
    labels = torch.tensor([test[i][1] for i in range(len(test))])
    task = load_task(base, bundle).eval()
    host = TaskHost(base)
    host.add_task("open", bundle)
    host.set_task("open")
    with torch.no_grad():
        for model in (task, host.model()):
            accuracy = (model(images).argmax(dim=1) == labels).float().mean().item()
            assert accuracy == pytest.approx(records[-1]["accuracy"], abs=1e-6)


@pytest.mark.slow
def test_test_only_kind_and_criterion_run_causal_lm_and_bundles_reproduce_perplexity(
    row_l1, files, tmp_path: Path
) -> None:
    from tests.experiments.test_causal_lm_run import _config

    config = _config(
        files,
        tmp_path,
        adapter={"kind": KIND, "rank": 2},
        pruning={"criterion": CRITERION, "densities": [0.5], "scoring_batches": 1},
    )
    assert (
        main(["run", str(_write(tmp_path / "lm.toml", config)), "--output", str(tmp_path / "run")])
        == 0
    )
    records = _records(tmp_path / "run")
    assert [r["method"] for r in records] == ["Scaled r2", "Scaled r2"]
    base, ids = _base(files), _held_out_ids(files)
    host = TaskHost(base)
    for record in records:
        bundle = tmp_path / "run" / "seed-0" / record["bundle"]
        name = record["bundle"].split("/")[0]  # the step directory names the task
        host.add_task(name, bundle)
        assert _perplexity(host.model(name), ids) == pytest.approx(record["perplexity"], rel=1e-5)
