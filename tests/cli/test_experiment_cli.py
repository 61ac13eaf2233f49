"""`spa run`, `spa report` and `spa demo` argument handling, and resume after a real kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spa.cli import build_parser, main

CONFIG = """
name = "tiny"
seeds = [0]
output_dir = "unused"

[model]
name = "tiny_convnet"
options = {width = 4}

[data]
name = "digits"
options = {task = "mod3", size = 8}
batch_size = 16

[adapter]
kind = "splora"
rank = 2

[pruning]
criterion = "weight"
densities = [0.7, 0.4, 0.2]

[train]
initial_epochs = 1
epochs_per_step = 1
max_batches_per_epoch = 2
lr = 0.05
"""


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


def _density_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "seed-0" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [
        {k: v for k, v in r.items() if not k.startswith("latency_")}
        for r in records
        if r["event"] == "density"
    ]


def test_cli_parser_has_demo_run_and_report() -> None:
    parser = build_parser()
    args = parser.parse_args(["demo", "--quick", "--output", "out"])
    assert args.quick and args.output == Path("out")
    args = parser.parse_args(["run", "c.toml", "--set", "train.lr=0.1", "--set", "seeds=[1]"])
    assert args.overrides == ["train.lr=0.1", "seeds=[1]"]
    args = parser.parse_args(["report", "a", "b"])
    assert args.run_dirs == [Path("a"), Path("b")]


@pytest.mark.slow
def test_cli_run_then_report_rebuilds_table(tmp_path: Path, config_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    assert (
        main(
            ["run", str(config_path), "--output", str(run_dir), "--set", "pruning.densities=[0.5]"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| Task | Method | Criterion | Density (%) | dParams (K) | MFLOPs | MMACs |" in out
    assert f"run directory: {run_dir}" in out
    (run_dir / "table.md").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert "digits/mod3" in (run_dir / "table.md").read_text()
    compared = tmp_path / "compared"
    assert main(["report", str(run_dir), "--output", str(compared)]) == 0
    assert (compared / "plots" / "accuracy_vs_flops.png").exists()
    # The same run twice would count every seed twice: refused.
    assert main(["report", str(run_dir), str(run_dir), "--output", str(compared)]) == 1
    assert "the same run is given twice" in capsys.readouterr().err
    config = (run_dir / "config.toml").read_text()
    assert f'output_dir = "{run_dir}"' in config  # the resolved config says where the run is


def test_cli_run_invalid_override_names_key(config_path: Path, capsys) -> None:
    assert main(["run", str(config_path), "--set", "train.learning_rate=0.1"]) == 1
    assert "'train.learning_rate': unknown key" in capsys.readouterr().err


def test_cli_run_invalid_choice_lists_allowed(config_path: Path, capsys) -> None:
    assert main(["run", str(config_path), "--set", "train.optimizer=adam"]) == 1
    assert "'train.optimizer': got 'adam'; allowed: 'sgd', 'adamw'" in capsys.readouterr().err


def test_cli_report_on_non_run_directory_fails(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path)]) == 1
    assert "is this a run directory?" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_run_killed_and_rerun_equals_uninterrupted(tmp_path: Path, config_path: Path) -> None:
    command = [sys.executable, "-m", "spa", "run", str(config_path), "--output"]
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    reference = tmp_path / "reference"
    subprocess.run(
        command + [str(reference)], check=True, env=environment, capture_output=True, timeout=600
    )

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        command + [str(killed)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = killed / "seed-0" / "checkpoint.pt"
    deadline = time.monotonic() + 600
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    step = torch.load(checkpoint, weights_only=True)["step"]
    assert step < 3, "the run finished before it could be killed"

    subprocess.run(
        command + [str(killed)], check=True, env=environment, capture_output=True, timeout=600
    )
    assert _density_records(killed) == _density_records(reference)
    assert [r["target_density"] for r in _density_records(killed)] == [1.0, 0.7, 0.4, 0.2]


def test_cli_run_ctrl_c_tells_how_to_resume(config_path: Path, monkeypatch, capsys) -> None:
    import spa.experiments.runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(spa.experiments.runner, "run", interrupted)
    assert main(["run", str(config_path)]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err


PLUGIN = '''
import dataclasses

from spa.adapters import register_kind
from tests.contract.scaled_lowrank import SCALED_LOWRANK, ScaledLowRankConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class PluginConfig(ScaledLowRankConfig):
    """The scaled low-rank adapter under another kind name."""


register_kind(dataclasses.replace(SCALED_LOWRANK, name="plugin_lowrank", config_type=PluginConfig))
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch) -> str:
    from spa.adapters import ADAPTER_KINDS

    (tmp_path / "spa_test_plugin.py").write_text(PLUGIN, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "spa_test_plugin"
    ADAPTER_KINDS._items.pop("plugin_lowrank", None)
    sys.modules.pop("spa_test_plugin", None)


def test_cli_run_import_registers_a_kind_before_the_config_is_read(
    tmp_path: Path, plugin: str, capsys
) -> None:
    path = tmp_path / "plugin.toml"
    path.write_text('[data]\nname = "nope"\n[adapter]\nkind = "plugin_lowrank"\n', "utf-8")
    assert main(["run", str(path)]) == 1
    assert "'adapter.kind': unknown 'plugin_lowrank'" in capsys.readouterr().err
    assert main(["run", str(path), "--import", plugin]) == 1
    assert "'data.name': unknown dataset 'nope'" in capsys.readouterr().err  # the kind was known
    assert main(["run", str(path), "--import", "no_such_module_here"]) == 1
    assert "--import no_such_module_here: cannot import it" in capsys.readouterr().err
