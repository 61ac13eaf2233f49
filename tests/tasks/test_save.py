"""`save_task` only writes: it refuses a model that is not compacted, naming the call to make."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import spa
from spa.errors import ConfigError
from spa.pruning import apply_masks, channel_groups, compute_masks


def _masked_task() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    base = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2)).eval()
    x = torch.randn(4, 6)
    groups = channel_groups(model, (x,))
    scores = {i: torch.arange(g.size, dtype=torch.float) for i, g in enumerate(groups)}
    apply_masks(model, compute_masks(groups, scores, density=0.5))
    with torch.no_grad():
        model[0].up.normal_()
    return base, model, x


def test_save_task_refuses_a_model_with_masked_channels_naming_spa_compacted(tmp_path):
    base, model, _ = _masked_task()
    path = tmp_path / "task.safetensors"
    with pytest.raises(ConfigError, match=r"not compacted; call spa\.compacted\(model\) first"):
        spa.save_task(model, path, base_model=base)
    assert not path.exists()


def test_save_task_writes_the_compacted_model_that_loads_as_the_masked_one(tmp_path):
    base, model, x = _masked_task()
    path = tmp_path / "task.safetensors"
    spa.save_task(spa.compacted(model, (x,)), path, base_model=base)
    loaded = spa.load_task(base, path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-6)
    assert loaded[0].weight.shape[0] < base[0].weight.shape[0]  # kept channels only


def test_save_task_with_keep_masks_stores_the_masks_as_they_are(tmp_path):
    base = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2)).eval()
    x = torch.randn(4, 6)
    with torch.no_grad():
        model[0].out_mask[[1, 4, 6]] = False  # set by hand: no hook masks on the head
        model[0].up.normal_()
    path = tmp_path / "task.safetensors"
    spa.save_task(model, path, base_model=base, keep_masks=True)
    loaded = spa.load_task(base, path)
    assert loaded[0].weight.shape == base[0].weight.shape  # zeroed channels, not removed
    kept = model[0].out_mask
    assert not bool(loaded[0].weight[~kept].any())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-6)
