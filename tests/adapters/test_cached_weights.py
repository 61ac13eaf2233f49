"""Cached fused weights never go stale: an optimizer that updates parameters in place without
moving their version counters (torch's fused AdamW) must not leave an eval forward behind."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import spa

CONFIGS = {
    "splora": lambda: spa.SPLoRAConfig(rank=2),
    "fine_pruning": lambda: spa.FinePruningConfig(),
    "splopa": lambda: spa.SPLoPAConfig(block_shape=(4, 4), num_prototypes=2),
}


@pytest.mark.parametrize("kind", CONFIGS)
def test_eval_forward_after_a_fused_adamw_step_uses_the_new_weights(kind):
    torch.manual_seed(0)
    model = spa.adapt(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)), CONFIGS[kind]())
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=0.1, fused=True
    )
    x = torch.randn(5, 8)
    for _ in range(2):
        model.eval()
        with torch.no_grad():
            model(x)  # an evaluation in between training steps (fills any cache)
        model.train()
        optimizer.zero_grad()
        model(x).square().sum().backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        got = model(x)
        expected = spa.fuse(copy.deepcopy(model))(x)  # computed afresh from the parameters
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
