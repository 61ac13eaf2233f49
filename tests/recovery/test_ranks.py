"""Adapter-rank allocation: heterogeneous SPLoRA ranks round-trip through bundles and TaskHost
exactly and count dParams by r_l (||m_row||_0 + ||m_col||_0)."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

import spa
from spa.accounting import learned_parameters
from spa.errors import ConfigError
from spa.models import resnet18
from spa.pruning import apply_masks, channel_groups, compute_masks
from spa.recovery import allocate_ranks, rank_importance, ranks, set_ranks
from spa.tasks import TaskHost, load_task, save_task
from tests.pruning._nets import randomise


def _task(rank: int = 4):
    base = resnet18(num_classes=3, small_input=True, width=8).eval()
    model = randomise(spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=rank)))
    with torch.no_grad():  # components of clearly different sizes per layer
        for index, (_, layer) in enumerate(spa.adapter_layers(model)):
            scale = torch.logspace(-2, 0, layer.rank) if index % 2 else torch.ones(layer.rank)
            layer.up.mul_(scale[:, None])
    x = torch.randn(2, 3, 16, 16)
    groups = channel_groups(model, x)
    scores = {i: torch.rand(g.size) for i, g in enumerate(groups)}
    apply_masks(model, compute_masks(groups, scores, 0.5))
    return base, model.eval(), x


def test_magnitude_importance_is_the_norm_of_each_masked_rank_one_term():
    _, model, _ = _task()
    scores = rank_importance(model)
    for name, layer in spa.adapter_layers(model):
        rows, cols = layer.out_mask.float(), layer.in_mask.float()
        for i in range(layer.rank):
            term = torch.outer(layer.down[:, i] * rows, layer.up[i] * cols)  # dense rank-1 term
            torch.testing.assert_close(scores[name][i], term.norm(), rtol=1e-5, atol=1e-7)


def test_allocate_ranks_keeps_the_best_normalised_components_by_brute_force():
    torch.manual_seed(0)
    scores = {"a": torch.rand(3), "b": torch.rand(4) * 10, "c": torch.rand(2)}
    budget, floor = 6, 1
    kept = allocate_ranks(scores, budget, min_rank=floor)
    assert sum(map(len, kept.values())) == budget

    def value(choice):  # total per-layer-normalised importance of a choice
        return sum(float(scores[n][i] / scores[n].sum()) for n, i in choice)

    every = [(n, i) for n, s in scores.items() for i in range(len(s))]
    feasible = [
        choice
        for choice in itertools.combinations(every, budget)
        if all(sum(1 for n, _ in choice if n == name) >= floor for name in scores)
    ]
    best = max(feasible, key=value)
    assert value([(n, i) for n, ids in kept.items() for i in ids]) == pytest.approx(value(best))
    with pytest.raises(ConfigError, match="rank budget"):
        allocate_ranks(scores, 2, min_rank=1)


def test_heterogeneous_ranks_round_trip_and_count_by_the_formula(tmp_path):
    base, model, x = _task(rank=4)
    total = sum(ranks(model).values())
    set_ranks(model, allocate_ranks(rank_importance(model), total // 2))
    allocated = ranks(model)
    assert len(set(allocated.values())) > 1 and sum(allocated.values()) == total // 2
    expected = sum(
        layer.down.shape[1] * (int(layer.out_mask.sum()) + int(layer.in_mask.sum()))
        for _, layer in spa.adapter_layers(model)
    )
    assert learned_parameters(model).by_kind["adapter"] == expected
    path = tmp_path / "task.safetensors"
    save_task(spa.compacted(model, x), path, base_model=base)
    loaded = load_task(base, path)
    compacted = spa.compact(copy.deepcopy(model), x)
    fused = spa.fuse(compacted)
    for name, _ in spa.adapter_layers(compacted):  # the task's weights, bit for bit
        assert torch.equal(loaded.get_submodule(name).weight, fused.get_submodule(name).weight)
    with torch.no_grad():
        reference = model(x)
        torch.testing.assert_close(loaded(x), reference, rtol=1e-5, atol=1e-6)
        host = TaskHost(base)
        host.add_task("t", path)
        torch.testing.assert_close(host.model("t")(x), reference, rtol=1e-5, atol=1e-6)
