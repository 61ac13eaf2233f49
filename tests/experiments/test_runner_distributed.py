"""`torchrun --standalone --nproc-per-node 2 -m spa run CONFIG` on the CPU (gloo).

A tiny config (TinyConvNet on 8x8 digits, SPLoRA, Taylor pruning to 60% and 30%) runs once on
two ranks and once in this process with the same global batch of 16. Both ranks must log the
same mask fingerprints. Tolerance against the single process: loss within 0.02, accuracy and
density within 0.05 - not float rounding, because the model has BatchNorm, which DDP normalises
per rank (8 examples instead of 16; seen: loss differs by ~1e-3). BatchNorm-free training equals
one process within 1e-5 (tests/distributed/test_multiprocess.py); the runner's MLP cannot be
used here because channel tracing fails on its batch-1 example (a torch-pruning limitation).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from spa.experiments.config import load_config
from spa.experiments.runner import run
from tests._torchrun import describe, torchrun

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
LOSS_TOLERANCE = 0.02
FRACTION_TOLERANCE = 0.05
CONFIG = """
name = "tiny-distributed"
seeds = [0]
output_dir = "unused"

[model]
name = "tiny_convnet"
options = {width = 4}

[data]
name = "digits"
options = {task = "parity", size = 8}
batch_size = 16

[adapter]
kind = "splora"
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


def _torchrun(arguments: list[str], retry: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("SPA_DIST_BACKEND", None)
    return torchrun(arguments, env, timeout=240, retry=retry)


def _density_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "seed-0" / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "density"]


class Interrupted(Exception):
    """Raised by a step hook to simulate a kill after a checkpoint."""


def _stop_after_first_pruning_step(seed: int, step: int, record: dict) -> None:
    if step == 1:
        raise Interrupted


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("distributed")
    config_path = folder / "tiny.toml"
    config_path.write_text(CONFIG)
    arguments = ["--nproc-per-node", "2", "-m", "spa", "run", str(config_path)]
    done = _torchrun(arguments + ["--output", str(folder / "two")])
    assert done.returncode == 0, describe(done)
    run(load_config(config_path), folder / "one")
    # An interrupted run (checkpoint after step 1), resumed by two ranks.
    with pytest.raises(Interrupted):
        run(load_config(config_path), folder / "resumed", step_hook=_stop_after_first_pruning_step)
    resumed = _torchrun(arguments + ["--output", str(folder / "resumed")])
    assert resumed.returncode == 0, describe(resumed)
    return {"folder": folder, "stderr": done.stderr, "resumed_stderr": resumed.stderr}


def _assert_close_records(multi: dict, single: dict) -> None:
    assert multi["step"] == single["step"]
    assert multi["density"] == pytest.approx(single["density"], abs=FRACTION_TOLERANCE)
    assert multi["loss"] == pytest.approx(single["loss"], abs=LOSS_TOLERANCE)
    assert multi["accuracy"] == pytest.approx(single["accuracy"], abs=FRACTION_TOLERANCE)


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
        _assert_close_records(multi, single)
    assert two[-1]["density"] < 0.5  # it did prune


def test_distributed_run_resumes_a_checkpoint_on_all_ranks(runs):
    resumed = runs["folder"] / "resumed"
    assert "resuming after step 1" in (resumed / "run.log").read_text()
    # Step 2 ran only in the distributed invocation: both ranks pruned from the checkpoint.
    found = re.findall(r"rank (\d): masks at density (\S+) have", runs["resumed_stderr"])
    assert sorted(found) == [("0", "0.300"), ("1", "0.300")]
    records = _density_records(resumed)
    assert [r["step"] for r in records] == [0, 1, 2]
    for multi, single in zip(records, _density_records(runs["folder"] / "one")):
        _assert_close_records(multi, single)


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
    done = _torchrun(arguments + ["--output", str(runs["folder"] / "odd")], retry=False)
    assert done.returncode != 0
    assert "global batch size 15 must be a positive multiple of the number of processes (2)" in (
        done.stderr
    )
