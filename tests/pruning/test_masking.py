"""compute_masks (global/local ranking, floors, round_to, density) and apply_masks."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import spa
from spa.errors import ConfigError
from spa.flops import density
from spa.pruning import apply_masks, channel_groups, compact, compute_masks, refresh_groups
from spa.pruning.masking import _Retained
from tests.pruning._nets import ConvNet, ResidualNet, mlp, randomise


def _mlp_groups():
    model = spa.adapt(mlp(), spa.FinePruningConfig())
    groups = channel_groups(model, torch.randn(2, 12))
    first = next(g for g in groups if g.root == "0")
    second = next(g for g in groups if g.root == "2")
    return model, groups, groups.index(first), groups.index(second)


def test_compute_masks_global_removes_lowest_scores_until_density():
    model, groups, first, second = _mlp_groups()
    scores = {first: torch.arange(16.0) / 100, second: torch.arange(16.0) / 100 + 0.005}
    # Layers (fc excluded: it is the head): 0 is 16x12, 2 is 16x16; base = 192 + 256 = 448.
    masks = compute_masks(groups, scores, density=0.6)
    apply_masks(model, masks)
    kept_first = int(masks["0"]["out_mask"].sum())
    kept_second = int(masks["2"]["out_mask"].sum())
    retained = kept_first * 12 + kept_second * kept_first
    assert retained / 448 <= 0.6
    assert density(model) == pytest.approx(retained / 448)
    # Scores interleave (0.00, 0.005, 0.01, ...): the removal counts differ by at most one.
    assert abs((16 - kept_first) - (16 - kept_second)) <= 1
    assert masks["0"]["out_mask"][: 16 - kept_first].logical_not().all()
    # One channel fewer removed would stay above the target (greedy stops at the first hit).
    assert (kept_first * 12 + (kept_second + 1) * kept_first) / 448 > 0.6 or (
        (kept_first + 1) * 12 + kept_second * (kept_first + 1)
    ) / 448 > 0.6


def test_compute_masks_local_removes_same_fraction_per_group():
    model, groups, first, second = _mlp_groups()
    scores = {first: torch.rand(16), second: torch.rand(16) * 100}
    masks = compute_masks(groups, scores, density=0.5, ranking="local")
    kept = [int(masks["0"]["out_mask"].sum()), int(masks["2"]["out_mask"].sum())]
    assert kept[0] == kept[1]
    assert (kept[0] * 12 + kept[1] * kept[0]) / 448 <= 0.5
    assert ((kept[0] + 1) * 12 + (kept[1] + 1) * (kept[0] + 1)) / 448 > 0.5


def test_compute_masks_min_channels_and_fraction_floors():
    _, groups, first, second = _mlp_groups()
    scores = {first: torch.rand(16), second: torch.rand(16)}
    masks = compute_masks(groups, scores, density=0.01, min_channels=3)
    assert int(masks["0"]["out_mask"].sum()) == 3
    masks = compute_masks(groups, scores, density=0.01, min_fraction=0.25)
    assert int(masks["2"]["out_mask"].sum()) == 4


def test_compute_masks_round_to_keeps_multiples():
    _, groups, first, second = _mlp_groups()
    scores = {first: torch.rand(16), second: torch.rand(16)}
    for target in (0.9, 0.5, 0.2):
        masks = compute_masks(groups, scores, density=target, round_to=4)
        for name in ("0", "2"):
            assert int(masks[name]["out_mask"].sum()) % 4 == 0


def test_compute_masks_keeps_removed_channels_removed():
    model, groups, first, second = _mlp_groups()
    masks = compute_masks(groups, {first: torch.rand(16), second: torch.rand(16)}, 0.7)
    apply_masks(model, masks)
    groups = channel_groups(model, torch.randn(2, 12))
    scores = {i: torch.full((g.size,), 10.0) for i, g in enumerate(groups)}  # all "important"
    again = compute_masks(groups, scores, 0.7)
    for name in ("0", "2"):
        assert torch.equal(again[name]["out_mask"], masks[name]["out_mask"])


def test_compute_masks_rejects_wrong_score_shape():
    _, groups, first, second = _mlp_groups()
    with pytest.raises(ConfigError, match=r"scores\[.*must have shape \(16,\)"):
        compute_masks(groups, {first: torch.rand(3), second: torch.rand(16)}, 0.5)
    with pytest.raises(ConfigError, match="density must be in"):
        compute_masks(groups, {first: torch.rand(16), second: torch.rand(16)}, 1.5)


def test_apply_masks_rejects_wrong_length():
    model, _, _, _ = _mlp_groups()
    with pytest.raises(ConfigError, match="0.out_mask has 16 channels"):
        apply_masks(model, {"0": {"out_mask": torch.ones(5, dtype=torch.bool)}})


@pytest.mark.parametrize("config", [spa.SPLoRAConfig(rank=2), spa.FinePruningConfig()])
def test_masked_residual_net_equals_compacted(config):
    model = randomise(spa.adapt(ResidualNet(), config))
    x = torch.randn(3, 3, 8, 8)
    groups = channel_groups(model, x)
    masks = compute_masks(groups, {i: torch.rand(g.size) for i, g in enumerate(groups)}, 0.4)
    apply_masks(model, masks)
    with torch.no_grad():
        masked = model(x)
        # A removed channel contributes nothing: its BN shift (randomised) is masked away.
        assert model.bn_b(torch.randn(1, 16, 2, 2))[0, ~masks["bn_b"]["out_mask"]].eq(0).all()
        compact(model, x)
        compacted = model(x)
    torch.testing.assert_close(compacted, masked, rtol=1e-4, atol=1e-5)
    assert model.bn_b.num_features == int(masks["bn_b"]["out_mask"].sum())


@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
def test_masked_grouped_depthwise_net_equals_compacted(spatial_dims):
    model = randomise(spa.adapt(ConvNet(spatial_dims), spa.SPLoRAConfig(rank=2)))
    x = torch.randn(2, 4, *(5,) * spatial_dims)
    groups = channel_groups(model, x)
    masks = compute_masks(groups, {i: torch.rand(g.size) for i, g in enumerate(groups)}, 0.5)
    apply_masks(model, masks)
    with torch.no_grad():
        masked = model(x)
        compact(model, x)
        compacted = model(x)
        fused = spa.fuse(model)(x)
    torch.testing.assert_close(compacted, masked, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused, masked, rtol=1e-4, atol=1e-5)
    conv2 = model.conv2.base
    assert conv2.groups == 2 and conv2.out_channels % 2 == 0
    assert model.conv3.base.groups == model.conv3.base.out_channels  # still depth-wise
    assert not math.isclose(density(model), 1.0)


@pytest.mark.parametrize("net", [ResidualNet, ConvNet])
def test_compute_masks_warning_agrees_with_measured_density(net):
    # Issue 10: later steps once subtracted already-masked channels again, so the warning
    # claimed "not reached (got 0.1066)" while the model held 0.0821, or missed a real floor.
    model = spa.adapt(net(), spa.FinePruningConfig())
    x = torch.randn(2, 3 if net is ResidualNet else 4, 8, 8)
    groups = channel_groups(model, x)
    for target in (0.7, 0.5, 0.3, 0.2, 0.1):
        current = refresh_groups(model, groups)
        scores = {i: torch.rand(group.size) for i, group in enumerate(current)}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            apply_masks(model, compute_masks(current, scores, target))
        measured = density(model)
        warned = [str(w.message) for w in caught if "not reached" in str(w.message)]
        if measured > target + 1e-9:
            assert warned and f"(got {measured:.4f})" in warned[0]
        else:
            assert not warned


def test_retained_counter_is_the_density_function():
    model = spa.adapt(ResidualNet(), spa.SPLoRAConfig(rank=2))
    x = torch.randn(2, 3, 8, 8)
    groups = channel_groups(model, x)
    for target in (0.6, 0.3):
        current = refresh_groups(model, groups)
        scores = {i: torch.rand(group.size) for i, group in enumerate(current)}
        apply_masks(model, compute_masks(current, scores, target))
        counter = _Retained(refresh_groups(model, groups))
        assert counter.density == pytest.approx(density(model), abs=1e-12)
