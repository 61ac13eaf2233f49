"""Inference optimisation keeps outputs: BatchNorm folding and channels-last."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import spa
from spa.deploy.optimise import fold_batchnorm, optimize_for_inference
from spa.errors import ConfigError
from spa.pruning import apply_masks, channel_groups, compact, compute_masks
from tests.pruning._nets import ResidualNet, randomise


def test_optimize_for_inference_folds_norms_and_keeps_outputs_of_compacted_model():
    model = randomise(spa.adapt(ResidualNet(), spa.SPLoRAConfig(rank=2)))
    x = torch.randn(2, 3, 8, 8)
    groups = channel_groups(model, x)
    scores = {i: torch.rand(g.size) for i, g in enumerate(groups)}
    apply_masks(model, compute_masks(groups, scores, 0.5, round_to=4))
    with torch.no_grad():
        expected = model(x)
    compact(model)
    optimized = optimize_for_inference(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in optimized.modules())
    with torch.no_grad():
        got = optimized(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_fold_batchnorm_refuses_adapted_model():
    with pytest.raises(ConfigError, match="fuse the model first"):
        fold_batchnorm(spa.adapt(ResidualNet(), spa.SPLoRAConfig(rank=2)))
