"""End to end over every described transformer family: adapt -> train -> score -> mask heads/FFN
-> masked == compacted == fused -> bundle -> load -> TaskHost; decoders also generate."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import spa
from spa.pruning import apply_masks, channel_groups, compact, compute_masks, score
from spa.pruning.criteria import CRITERIA
from tests._transformers import CASES, Case, assert_same_generation

UNITS = [("heads",), ("ffn",), ("heads", "ffn")]
IDS = [case.family for case in CASES]


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().clamp_min(1e-6)
    torch.testing.assert_close(actual / scale, expected / scale, rtol=0, atol=1e-4)


def _trained(case: Case) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor, torch.Tensor]:
    """(base copy, adapted model after one SGD step, inputs, targets)."""
    model = case.build().eval()
    base = copy.deepcopy(model)
    spa.adapt(model, spa.SPLoRAConfig(rank=2))
    x, y = case.inputs(), torch.tensor([0, 2])
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    F.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        for parameter in trainable:
            if parameter.grad is not None:
                parameter.add_(parameter.grad, alpha=-0.5)  # a large step: non-trivial adapters
    assert any(not torch.equal(p, b) for p, b in zip(trainable, before))
    for name, parameter in model.named_parameters():
        if name in frozen:
            assert torch.equal(parameter, frozen[name]), name  # the base stays bit-identical
    return base, model, x, y


def _masked(model, x, y, units, criterion="taylor", density=0.6):
    groups = channel_groups(model, x, units=units)
    masks = compute_masks(groups, score(model, criterion, groups, data=[(x, y)]), density)
    apply_masks(model, masks)
    return groups


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_family_every_criterion_scores_every_group_channel(case):
    _, model, x, y = _trained(case)
    groups = channel_groups(model, x)
    assert len(groups) == 2 * case.blocks  # one heads group and one FFN group per block
    for criterion in CRITERIA.names():
        scores = score(model, criterion, groups, data=[(x, y)])
        for index, group in enumerate(groups):
            assert scores[index].shape == (group.size,)
            assert bool(torch.isfinite(scores[index]).all()), (criterion, group.root)
            assert bool((scores[index] != 0).any()), (criterion, group.root)


@pytest.mark.slow
@pytest.mark.parametrize("units", UNITS, ids=["heads", "ffn", "both"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_family_masked_equals_compacted_equals_fused_and_bundle(case, units, tmp_path):
    base, model, x, y = _trained(case)
    with torch.no_grad():
        dense = model(x)
    groups = _masked(model, x, y, units)
    assert any(not all(g.kept) for g in spa.pruning.refresh_groups(model, groups))
    with torch.no_grad():
        masked = model(x)
    assert not torch.allclose(masked, dense, atol=1e-5)  # something was really removed
    compacted = compact(copy.deepcopy(model), x)
    fused = spa.fuse(compacted)
    with torch.no_grad():
        _close(compacted(x), masked)
        _close(fused(x), masked)
    assert _parameters(fused) < _parameters(base)
    path = tmp_path / "task.safetensors"
    spa.save_task(spa.compacted(model), path, base_model=base)
    loaded = spa.load_task(base, path)
    host = spa.TaskHost(base)
    host.add_task("task", path)
    with torch.no_grad():
        _close(loaded(x), masked)
        _close(host.model("task")(x), masked)
    assert _parameters(loaded) < _parameters(base)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.decoder], ids=lambda c: c.family)
def test_decoder_greedy_generation_with_kv_cache_same_masked_and_compacted(case, tmp_path):
    base, model, x, y = _trained(case)
    _masked(model, x, y, ("heads", "ffn"), criterion="weight", density=0.5)
    compacted = compact(copy.deepcopy(model))
    assert_same_generation(model, compacted, base, tmp_path / "task.safetensors")
