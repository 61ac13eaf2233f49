"""Two CPU processes (gloo): identical masks, DDP == one process, compaction, failing ranks.

Each test starts two ranks of `tests.distributed._worker` (through `torchrun --standalone`, or
as two plain processes with torchrun's variables where the test needs a rank to die without
torchrun stopping the other one) and compares their results with each other and with the same
scenario run in this single process.

Tolerance: parameters and metrics of the 2-rank DDP run equal the single-process run with the
same global batch within 1e-5 (float32 sums in a different order; seen: ~5e-8).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests._torchrun import describe, torchrun
from tests.distributed import _scenarios

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-5


def _environment(**extra: str) -> dict[str, str]:
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    environment.pop("SPA_DIST_BACKEND", None)
    return environment


def _torchrun(scenario: str, out_dir: Path) -> list[dict]:
    arguments = ["--nproc-per-node", "2", "-m", "tests.distributed._worker", scenario, str(out_dir)]
    done = torchrun(arguments, _environment(), timeout=120)
    assert done.returncode == 0, describe(done)
    return [torch.load(out_dir / f"rank-{r}.pt", weights_only=False) for r in range(2)]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_ranks(scenario: str, out_dir: Path, timeout_s: int) -> list[subprocess.Popen]:
    """Two processes with the variables torchrun would set, but no agent watching them."""
    port = str(_free_port())
    processes = []
    for rank in range(2):
        environment = _environment(
            RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port, SPA_DIST_TIMEOUT=str(timeout_s),
        )  # fmt: skip
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.distributed._worker", scenario, str(out_dir)],
                cwd=ROOT,
                env=environment,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return processes


def _max_difference(first: dict, second: dict) -> float:
    assert first.keys() == second.keys()
    return max((first[k].double() - second[k].double()).abs().max().item() for k in first)


def test_taylor_masks_identical_across_ranks_only_with_all_reduce(tmp_path):
    ranks = _torchrun("taylor_masks", tmp_path)
    assert [r["shard_size"] for r in ranks] == [16, 16]  # each rank saw half of the 32 images
    # Without the all-reduce the shards lead to different masks (so this test can fail) ...
    assert ranks[0]["local"] != ranks[1]["local"]
    for result in ranks:
        assert "pruning masks differ across ranks: rank(s) [1]" in result["mismatch_error"]
        assert ranks[0]["local"][:12] in result["mismatch_error"]
    # ... with it, both ranks hold the masks one process computes from all the data.
    assert ranks[0]["reduced"] == ranks[1]["reduced"] == ranks[0]["reference"]
    for index, reference in ranks[0]["reference_scores"].items():
        torch.testing.assert_close(ranks[0]["reduced_scores"][index], reference, rtol=0, atol=1e-6)
        torch.testing.assert_close(ranks[1]["reduced_scores"][index], reference, rtol=0, atol=1e-6)


def test_movement_scores_identical_across_ranks_only_with_gradient_all_reduce(tmp_path):
    ranks = _torchrun("movement_masks", tmp_path)
    single = _scenarios.movement_masks()
    assert ranks[0]["local"] != ranks[1]["local"]  # per-shard scores disagree (test can fail)
    assert ranks[0]["reduced"] == ranks[1]["reduced"]
    # Averaged per-rank gradients of half batches = the gradient of the full batch.
    assert ranks[0]["reduced"] == single["reduced"] == single["local"]


def test_ddp_training_matches_single_process_with_same_global_batch(tmp_path):
    ranks = _torchrun("ddp_training", tmp_path)
    single = _scenarios.ddp_training()
    assert [r["wrapped"] for r in ranks] == ["DistributedDataParallel"] * 2
    assert single["wrapped"] == "Sequential"
    assert _max_difference(ranks[0]["state"], ranks[1]["state"]) == 0.0
    assert _max_difference(ranks[0]["state"], single["state"]) <= TOLERANCE
    assert [r["broadcast"] for r in ranks] == [{"rank": 0}] * 2
    assert [r["synchronised"].tolist() for r in ranks] == [[0.0, 0.0]] * 2
    # The run trained (parameters moved, loss fell), and its metrics match one process's.
    assert _max_difference(ranks[0]["state"], _scenarios.adapted_mlp().state_dict()) > 1e-2
    assert ranks[0]["after"]["loss"] < ranks[0]["before"]["loss"]
    for result in ranks:
        assert result["after"]["loss"] == pytest.approx(single["after"]["loss"], abs=TOLERANCE)
        assert result["after"]["accuracy"] == single["after"]["accuracy"]


def test_compaction_midway_then_rewrap_matches_single_process(tmp_path):
    ranks = _torchrun("compaction_midway", tmp_path)
    single = _scenarios.compaction_midway()
    assert ranks[0]["fingerprint"] == ranks[1]["fingerprint"] == single["fingerprint"]
    before, after = ranks[0]["parameters"]
    assert after < before  # compaction made tensors smaller mid-training
    for name, kept in single["kept"].items():
        assert torch.equal(ranks[0]["kept"][name], kept) and torch.equal(
            ranks[1]["kept"][name], kept
        )
    assert [r["wrapped"] for r in ranks] == ["DistributedDataParallel"] * 2
    assert _max_difference(ranks[0]["state"], ranks[1]["state"]) == 0.0
    assert _max_difference(ranks[0]["state"], single["state"]) <= TOLERANCE
    assert ranks[0]["after"]["loss"] == pytest.approx(single["after"]["loss"], abs=TOLERANCE)


def _finish(processes: list[subprocess.Popen], survivor: int, limit_s: float) -> tuple:
    start = time.monotonic()
    try:
        _, stderr = processes[survivor].communicate(timeout=limit_s)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.communicate()
    return processes[survivor].returncode, stderr, time.monotonic() - start


def test_rank_that_exits_stops_the_other_with_clear_error(tmp_path):
    processes = _start_ranks("rank_exits", tmp_path, timeout_s=20)
    code, stderr, _ = _finish(processes, survivor=0, limit_s=50)
    assert processes[1].returncode == 3
    assert code != 0
    assert (
        "SpaError: rank 0: comparing criterion statistics (keys and shapes) across ranks" in stderr
    )
    assert "Connection closed by peer" in stderr  # the backend's cause, kept in the message
    assert "another rank probably crashed" in stderr


def test_rank_that_hangs_makes_the_other_fail_within_the_timeout(tmp_path):
    processes = _start_ranks("rank_hangs", tmp_path, timeout_s=5)
    code, stderr, elapsed = _finish(processes, survivor=0, limit_s=50)
    assert code != 0
    assert "SpaError: rank 0: wrapping the model in DistributedDataParallel" in stderr
    assert elapsed < 40  # 5 s timeout + start-up, far below rank 1's 120 s sleep
