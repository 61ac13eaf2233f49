"""`torchrun --standalone --nproc-per-node 2 -m spa run CONFIG` on the CPU (gloo).

A tiny config (an MLP without BatchNorm on 8x8 digits, SPLoRA, Taylor pruning to 60% and 30%)
runs once on two ranks and once in this process with the same global batch. Tolerance: the
records' loss and accuracy, and the bundles' tensors, agree within 1e-4 (float32 sums in a
different order; the masks themselves must be identical).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spa.experiments.config import load_config
from spa.experiments.runner import run
from spa.tasks.format import read_bundle

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-4
CONFIG = """
name = "tiny-distributed"
seeds = [0]
output_dir = "unused"

[model]
name = "mlp"
options = {hidden = [16, 16]}

[data]
name = "digits"
options = {task = "parity", size = 8}
batch_size = 16

[adapter]
method = "splora"
rank = 2

[pruning]
criterion = "taylor"
densities = [0.6, 0.3]
scoring_batches = 2

[train]
initial_epochs = 1
epochs_per_step = 1
max_batches_per_epoch = 4
lr = 0.05
"""


def _torchrun(arguments: list[str], **environment: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"] + arguments
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **environment)
    env.pop("SPA_DIST_BACKEND", None)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


def _density_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "seed-0" / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "density"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("distributed")
    config_path = folder / "tiny.toml"
    config_path.write_text(CONFIG)
    arguments = ["--nproc-per-node", "2", "-m", "spa", "run", str(config_path)]
    done = _torchrun(arguments + ["--output", str(folder / "two")])
    assert done.returncode == 0, done.stderr[-4000:]
    run(load_config(config_path), folder / "one")
    return {"folder": folder, "stderr": done.stderr}


def test_distributed_run_masks_identical_on_both_ranks(runs):
    found = re.findall(r"rank (\d): masks at density (\S+) have fingerprint (\w+)", runs["stderr"])
    by_rank = {rank: [(d, f) for r, d, f in found if r == rank] for rank in ("0", "1")}
    assert [d for d, _ in by_rank["0"]] == ["0.600", "0.300"]
    assert by_rank["0"] == by_rank["1"]
    assert by_rank["0"][0][1] != by_rank["0"][1][1]  # a second pruning step changed them


def test_distributed_run_metrics_match_single_process(runs):
    two = _density_records(runs["folder"] / "two")
    one = _density_records(runs["folder"] / "one")
    assert [r["step"] for r in two] == [r["step"] for r in one] == [0, 1, 2]
    for multi, single in zip(two, one):
        assert multi["density"] == single["density"]
        assert multi["dparams"] == single["dparams"]
        assert multi["loss"] == pytest.approx(single["loss"], abs=TOLERANCE)
        assert multi["accuracy"] == pytest.approx(single["accuracy"], abs=TOLERANCE)
    assert two[-1]["density"] < 0.5  # it did prune


def test_distributed_run_bundles_match_single_process(runs):
    steps = sorted((runs["folder"] / "one" / "seed-0").glob("step-*"))
    assert len(steps) == 3
    for step_dir in steps:
        single = read_bundle(step_dir / "task.safetensors")
        multi = read_bundle(runs["folder"] / "two" / "seed-0" / step_dir.name / "task.safetensors")
        assert multi.metadata.get("masks") == single.metadata.get("masks")
        assert single.tensors.keys() == multi.tensors.keys()
        for key, value in single.tensors.items():
            if value.is_floating_point():
                torch.testing.assert_close(multi.tensors[key], value, rtol=0, atol=TOLERANCE)
            else:
                assert torch.equal(multi.tensors[key], value), key  # packed masks, indices


def test_distributed_run_only_rank_zero_writes(runs):
    two = runs["folder"] / "two"
    assert (two / "table.md").exists() and (two / "run.log").exists()
    log = (two / "run.log").read_text()
    assert "rank 0: masks" in log and "rank 1: masks" not in log
    epochs = [
        r
        for r in map(json.loads, (two / "seed-0" / "metrics.jsonl").read_text().splitlines())
        if r["event"] == "epoch"
    ]
    assert len(epochs) == 3  # one record per epoch, not one per rank


def test_distributed_run_refuses_indivisible_global_batch(runs):
    config_path = runs["folder"] / "odd.toml"
    config_path.write_text(CONFIG.replace("batch_size = 16", "batch_size = 15"))
    arguments = ["--nproc-per-node", "2", "-m", "spa", "run", str(config_path)]
    done = _torchrun(arguments + ["--output", str(runs["folder"] / "odd")])
    assert done.returncode != 0
    assert "global batch size 15 must be a positive multiple of the number of processes (2)" in (
        done.stderr
    )
