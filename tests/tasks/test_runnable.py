"""`save_task` never writes a bundle that cannot run (issue 21, item 5)."""

from __future__ import annotations

import copy

import pytest
import torch

import spa
from spa.errors import ConfigError
from spa.pruning import apply_masks
from tests._traced_models import build, traced_path


@pytest.fixture(autouse=True)
def _traced(monkeypatch):
    traced_path(monkeypatch)


def _masked_whisper(rows: list[int]):
    """Whisper's encoder (no family: traced path) with `rows` of block 0's q/k/v and the
    matching output-projection columns masked, as hand-set masks would."""
    model, x = build("whisper_encoder")
    base = copy.deepcopy(model)
    spa.adapt(model, spa.SPLoRAConfig(rank=2))
    attention = "model.encoder.layers.0.self_attn"
    keep = torch.ones(32, dtype=torch.bool)
    keep[rows] = False
    masks = {f"{attention}.{p}_proj": {"out_mask": keep} for p in "qkv"}
    masks[f"{attention}.out_proj"] = {"in_mask": keep}
    apply_masks(model, masks)
    return base, model, x


def test_save_task_refuses_heads_cut_in_the_middle(tmp_path):
    base, model, _ = _masked_whisper([0, 1, 2])  # three of head 0's eight rows
    path = tmp_path / "task.safetensors"
    with pytest.raises(ConfigError, match=r"layers\.0\.self_attn: projections .*whole heads"):
        spa.save_task(spa.compacted(model), path, base_model=base)
    assert not path.exists()


def test_save_task_writes_whole_heads_and_the_bundle_runs(tmp_path):
    base, model, x = _masked_whisper(list(range(8, 16)))  # head 1, whole
    path = tmp_path / "task.safetensors"
    spa.save_task(spa.compacted(model), path, base_model=base)
    with torch.no_grad():
        torch.testing.assert_close(spa.load_task(base, path)(x), model(x), rtol=1e-4, atol=1e-5)
