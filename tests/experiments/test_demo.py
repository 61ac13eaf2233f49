"""The embedded demo end to end in its quick mode: tables, plots, bundles and task switching."""

from __future__ import annotations

import tomllib

import pytest
import torch

from spa.experiments.demo import QUICK, run_demo


@pytest.mark.slow
def test_demo_quick_runs_end_to_end_and_bundles_reload(quick_demo) -> None:
    from spa.data import load_dataset
    from spa.models import create_model, load_torchvision_weights
    from spa.tasks import load_task

    result = quick_demo
    output = result.output_dir

    # Quick mode still learns: the source model is far above chance (10 classes: 10%).
    assert result.source_accuracy > 0.5
    summary = result.summary()
    assert "(chance 10%; 10 digit classes)" in summary
    assert "NOTE: --quick is a short smoke run" in summary and "WARNING" not in summary
    # Its own files, marked, beside (never over) the full demo's table.md, table.csv, plots/.
    smoke = output / "smoke-test"
    assert not (output / "table.md").exists() and not (output / "plots").exists()
    assert (smoke / "table.md").read_text().startswith("**Smoke test** (`spa demo --quick`")
    assert {p.parent for p in result.report.plots} == {smoke / "plots"}
    rows = [line for line in (smoke / "table.md").read_text().splitlines() if "| digits/" in line]
    assert len(rows) == 2 * 2 * 3
    # Each row names its run: one run per (task, method).
    assert {line.split(" | ")[0].strip("| ") for line in rows} == {
        f"{task}-{method}" for task in QUICK.tasks for method in ("fine-pruning", "splora")
    }
    # The resolved configs record where each run really is.
    for run in result.runs:
        config = tomllib.loads((run.run_dir / "config.toml").read_text())
        assert config["output_dir"] == str(run.run_dir)
    assert (smoke / "table.csv").exists()
    assert sorted(p.name for p in result.report.plots) == [
        "accuracy_vs_dparams.png",
        "accuracy_vs_flops.png",
        "dparams_vs_density.png",
    ]
    bundles = sorted(output.glob("runs-quick/*/seed-0/step-*/task.safetensors"))
    assert len(bundles) == len(QUICK.tasks) * 2 * (1 + len(QUICK.densities))

    base = create_model(
        "resnet18", num_classes=10, small_input=True, width=QUICK.width, in_channels=1
    )
    load_torchvision_weights(base, result.source)
    for run in result.runs:
        record = run.records[1]  # an intermediate density, not the one the host served
        task_name = record["task"].split("/")[1]
        model = load_task(base, run.run_dir / "seed-0" / record["bundle"])
        test = load_dataset("digits", None, "test", task=task_name, size=QUICK.image_size)
        images = torch.stack([test[i][0] for i in range(len(test))])
        labels = torch.tensor([test[i][1] for i in range(len(test))])
        with torch.no_grad():
            accuracy = (model(images).argmax(dim=1) == labels).float().mean().item()
        assert accuracy == pytest.approx(record["accuracy"], abs=1e-6)

    assert len(result.switches) == len(QUICK.tasks) * 2
    for switch in result.switches:
        assert switch.accuracy == pytest.approx(switch.recorded_accuracy, abs=1e-6)
    assert "Task switching" in summary and str(smoke / "table.md") in summary

    again = run_demo(output, quick=True)  # cached source, finished runs: nothing retrains
    assert [r.records for r in again.runs] == [r.records for r in result.runs]
