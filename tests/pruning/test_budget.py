"""Pruning to a MACs budget: compacted models measured by torch's FLOP counter meet the target."""

from __future__ import annotations

import math
from copy import deepcopy

import pytest
import torch

import spa
from spa.errors import ConfigError
from spa.flops import count_macs
from spa.models import resnet18
from spa.pruning import (
    ChannelPruningConfig,
    IterativeSchedule,
    apply_masks,
    channel_groups,
    compact,
    compute_masks,
    iterative_prune,
    macs_profile,
    prune_step,
)
from spa.pruning.budget import flops_profile
from tests.pruning._nets import ResidualNet, randomise


def _model():
    model = resnet18(num_classes=10, small_input=True, width=8)
    return randomise(spa.adapt(model, spa.SPLoRAConfig(rank=2)))


def test_macs_profile_positions_match_layer_macs():
    model = _model()
    x = torch.randn(2, 3, 16, 16)
    layers = dict(spa.adapter_layers(model))
    profile = macs_profile(model, layers, x)
    dense = count_macs(spa.fuse(model), x)
    assert profile.total == dense
    # Independent: each conv's MACs from its hyper-parameters and the measured output size.
    outputs = {}
    handles = [
        layer.register_forward_hook(lambda m, a, o, n=name: outputs.__setitem__(n, o.shape))
        for name, layer in layers.items()
    ]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    for name, layer in layers.items():
        shape = outputs[name]
        weight = layer.base.weight
        expected = math.prod(shape) * math.prod(weight.shape[1:])  # out positions x in/g x k
        assert profile.positions[name] * math.prod(weight.shape) == expected
    assert 0 < profile.fixed < profile.total


@pytest.mark.parametrize("ranking", ["global", "local"])
@pytest.mark.parametrize("target", [0.5, 0.25])
def test_compute_masks_flops_target_met_after_compaction(ranking, target):
    model = _model()
    x = torch.randn(2, 3, 16, 16)
    dense = count_macs(spa.fuse(model), x)
    groups = channel_groups(model, x)
    profile = flops_profile(model, groups, x)
    scores = {i: torch.rand(g.size) for i, g in enumerate(groups)}
    apply_masks(model, compute_masks(groups, scores, target, ranking=ranking, macs=profile))
    with torch.no_grad():
        masked = model(x)
    compact(model, x)
    fused = spa.fuse(model)
    pruned = count_macs(fused, x)
    assert pruned <= target * dense * 1.001
    assert pruned >= 0.6 * target * dense  # reaches the budget, not far below it
    with torch.no_grad():
        torch.testing.assert_close(fused(x), masked, rtol=1e-4, atol=1e-4)


def test_prune_step_flops_target_needs_profile():
    model = _model()
    x = torch.randn(2, 3, 16, 16)
    groups = channel_groups(model, x)
    config = ChannelPruningConfig(target="flops")
    with pytest.raises(ConfigError, match="MACs profile"):
        prune_step(model, groups, 0.5, config)


def test_config_rejects_unknown_target():
    with pytest.raises(ConfigError, match="target"):
        ChannelPruningConfig(target="latency")


def test_iterative_prune_flops_target_visits_scheduled_fractions():
    model = randomise(spa.adapt(ResidualNet(), spa.SPLoRAConfig(rank=2)))
    x = torch.randn(2, 3, 8, 8)
    dense = count_macs(spa.fuse(model), x)
    reached = []

    def hook(model, target, index):
        copy = compact(deepcopy(model), x)
        reached.append((target, count_macs(spa.fuse(copy), x) / dense))

    config = ChannelPruningConfig(
        target="flops", schedule=IterativeSchedule(step=0.2, target=0.6, epochs_per_step=0)
    )
    iterative_prune(model, lambda m, e: None, x, config=config, hook=hook)
    assert [t for t, _ in reached] == pytest.approx([0.8, 0.6])
    for target, fraction in reached:
        assert fraction <= target + 1e-3


@pytest.mark.parametrize("units", [("hidden",), ("heads", "ffn", "hidden")], ids=["hidden", "all"])
@pytest.mark.parametrize("ranking", ["global", "local"])
def test_flops_target_with_the_hidden_size_counts_the_lm_head(units, ranking):
    from tests._transformers import VOCAB, llama

    torch.manual_seed(0)
    model = spa.adapt(llama().eval(), spa.SPLoRAConfig(rank=2))
    ids = torch.randint(1, VOCAB, (2, 24))
    dense = count_macs(spa.fuse(deepcopy(model)), ids)
    groups = channel_groups(model, ids, units=units)
    profile = flops_profile(model, groups, ids)
    assert list(profile.plain) == ["model.lm_head"]  # the head reads the hidden size
    scores = {i: torch.rand(g.size) for i, g in enumerate(groups)}
    apply_masks(model, compute_masks(groups, scores, 0.5, ranking=ranking, macs=profile))
    pruned = count_macs(spa.fuse(compact(model)), ids)
    # Met, and not overshot: counted as fixed, the head made the ranking prune to its floors.
    assert 0.6 * 0.5 * dense <= pruned <= 0.5 * dense * 1.001
