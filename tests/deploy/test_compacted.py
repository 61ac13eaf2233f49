"""`spa.compacted`: the compacted copy `save_task` takes, or the model itself when unmasked."""

from __future__ import annotations

import copy

import torch
from torch import nn

import spa
from spa.deploy import has_pruned_channels
from spa.pruning import apply_masks, channel_groups, compute_masks


def _adapted() -> tuple[nn.Module, torch.Tensor]:
    base = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    return spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2)).eval(), torch.randn(4, 6)


def test_compacted_returns_an_unmasked_model_itself():
    model, _ = _adapted()
    assert not has_pruned_channels(model)
    assert spa.compacted(model) is model


def test_compacted_copies_a_masked_model_and_leaves_it_unchanged():
    model, x = _adapted()
    groups = channel_groups(model, (x,))
    scores = {i: torch.arange(g.size, dtype=torch.float) for i, g in enumerate(groups)}
    apply_masks(model, compute_masks(groups, scores, density=0.5))
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    smaller = spa.compacted(model, (x,))
    assert smaller is not model and not has_pruned_channels(smaller)
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    kept = int(model[0].out_mask.sum())
    assert smaller[0].base.weight.shape[0] == kept < model[0].base.weight.shape[0]
    with torch.no_grad():
        torch.testing.assert_close(smaller(x), model(x), rtol=1e-5, atol=1e-6)
