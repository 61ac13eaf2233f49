"""The iterative prune-train loop on a tiny CNN and generated data."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import spa
from spa.flops import density
from spa.models import tiny_convnet
from spa.pruning import ChannelPruningConfig, IterativeSchedule, iterative_prune


def _data():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 1, 8, 8, generator=generator)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    return [(x[:8], y[:8]), (x[8:], y[8:])]


def _train(calls):
    def train(model, epochs):
        calls.append(epochs)
        optimizer = spa.pruning.paper_optimizer(model, lr=0.01)
        model.train()
        for _ in range(epochs):
            for x, y in _data():
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()
                optimizer.step()

    return train


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "criterion"),
    [(spa.FinePruningConfig(), "taylor"), (spa.SPLoRAConfig(rank=2), "weight")],
)
def test_iterative_prune_visits_densities_and_calls_hook(config, criterion):
    model = spa.adapt(tiny_convnet(num_classes=2, width=8), config)
    schedule = IterativeSchedule(initial_epochs=1, epochs_per_step=1, step=0.2, target=0.3)
    calls, visited = [], []

    def hook(model, target, index):
        visited.append((index, target, density(model)))

    iterative_prune(
        model,
        _train(calls),
        torch.randn(2, 1, 8, 8),
        config=ChannelPruningConfig(criterion=criterion, schedule=schedule),
        data=_data(),
        hook=hook,
    )
    assert [v[0] for v in visited] == [0, 1, 2, 3]
    assert [v[1] for v in visited] == pytest.approx([0.8, 0.6, 0.4, 0.3])
    measured = [v[2] for v in visited]
    assert measured == sorted(measured, reverse=True)
    assert all(m <= t + 1e-9 for _, t, m in visited)
    assert calls == [1, 1, 1, 1, 1]
    spa.pruning.compact(model, torch.randn(2, 1, 8, 8))
    assert density(model) == pytest.approx(measured[-1])
