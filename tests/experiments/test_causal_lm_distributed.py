"""`torchrun --nproc-per-node 2 -m spa run CONFIG` for a causal LM (gloo, CPU): a tiny Llama on the
embedded text, SPLoRA, heads + FFN + hidden-size pruning, against the same run in one process.

A Llama has no BatchNorm, so DDP over two halves of every global batch follows the one-process
run to float rounding (the next-token loss is a mean over equal token counts per rank)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from spa.experiments.config import load_config
from spa.experiments.runner import run
from tests._torchrun import describe, torchrun

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """
name = "tiny-lm-distributed"
seeds = [0]
output_dir = "unused"

[model]
name = "tiny_llama"

[model.options]
hidden_size = 32
num_layers = 1
num_heads = 4
num_key_value_heads = 2
intermediate_size = 64
max_positions = 64

[data]
name = "embedded"
options = {sequence_length = 32, byte_fallback = true, max_eval_blocks = 16}
batch_size = 8
eval_batch_size = 16

[adapter]
kind = "splora"
rank = 2

[pruning]
criterion = "taylor"
densities = [0.5]
scoring_batches = 1
units = ["heads", "ffn", "hidden"]
ranking = "local"

[train]
optimizer = "adamw"
lr = 0.01
weight_decay = 0.0
lr_schedule = "constant"
initial_epochs = 1
epochs_per_step = 1
max_batches_per_epoch = 3
"""


def _records(run_dir: Path, event: str = "density") -> list[dict]:
    lines = (run_dir / "seed-0" / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def test_distributed_causal_lm_run_matches_one_process_with_identical_masks(tmp_path):
    config_path = tmp_path / "lm.toml"
    config_path.write_text(CONFIG)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("SPA_DIST_BACKEND", None)
    arguments = ["--nproc-per-node", "2", "-m", "spa", "run", str(config_path)]
    done = torchrun(arguments + ["--output", str(tmp_path / "two")], env, timeout=300)
    assert done.returncode == 0, describe(done)
    run(load_config(config_path), tmp_path / "one")

    found = re.findall(r"rank (\d): masks at density (\S+) have fingerprint (\w+)", done.stderr)
    assert sorted((rank, density) for rank, density, _ in found) == [("0", "0.500"), ("1", "0.500")]
    assert found[0][2] == found[1][2]  # both ranks pruned the same heads, neurons and channels
    two, one = _records(tmp_path / "two"), _records(tmp_path / "one")
    assert [r["step"] for r in two] == [r["step"] for r in one] == [0, 1]
    for multi, single in zip(two, one):
        assert multi["density"] == pytest.approx(single["density"], abs=1e-9)
        assert multi["perplexity"] == pytest.approx(single["perplexity"], rel=1e-3)
    assert two[-1]["density"] <= 0.5
    # Rank 0 trained on its half of every batch (its epoch loss is over that half only).
    halves = [r["loss"] for r in _records(tmp_path / "two", "epoch")]
    wholes = [r["loss"] for r in _records(tmp_path / "one", "epoch")]
    assert all(half != whole for half, whole in zip(halves, wholes))
