"""compact: physically smaller models equal to the masked ones, on ResNets and tiny nets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import spa
from spa.accounting import count_learned_parameters
from spa.flops import count_flops, density
from spa.models import resnet18, resnet50
from spa.pruning import apply_masks, channel_groups, compact, compute_masks
from tests.pruning._nets import ResidualNet, randomise


def _prune_randomly(model, x, target, ranking="global"):
    groups = channel_groups(model, x)
    scores = {i: torch.rand(g.size) for i, g in enumerate(groups)}
    masks = compute_masks(groups, scores, target, ranking=ranking)
    apply_masks(model, masks)
    return masks


def _stage_shapes_consistent(model):
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        widths = set()
        for block in stage:
            last = block.conv3 if hasattr(block, "conv3") else block.conv2
            widths.add(last.base.out_channels)
            norm = block.bn3 if hasattr(block, "bn3") else block.bn2
            assert norm.num_features == last.base.out_channels
            if block.downsample is not None:
                widths.add(block.downsample[0].base.out_channels)
        assert len(widths) == 1, widths  # residual sums need one width per stage


def _check_resnet(builder, x):
    model = randomise(
        spa.adapt(builder(num_classes=10, small_input=True, width=16), spa.SPLoRAConfig(rank=4))
    )
    original = {n: l.base.weight.detach().clone() for n, l in spa.adapter_layers(model)}
    _prune_randomly(model, x, 0.7)  # removes roughly 30% of the channels
    with torch.no_grad():
        masked = model(x)
    dense_flops = count_flops(spa.fuse(model), x)
    compact(model, x)
    _stage_shapes_consistent(model)
    for name, layer in spa.adapter_layers(model):
        rows, cols = layer.out_indices, layer.in_indices
        torch.testing.assert_close(layer.base.weight, original[name][rows][:, cols])
    fused = spa.fuse(model)
    assert not spa.adapters.is_adapted(fused)
    with torch.no_grad():
        torch.testing.assert_close(
            fused(x), masked, rtol=1e-4, atol=1e-4 * masked.abs().max().item()
        )
    assert count_flops(fused, x) < 0.8 * dense_flops


@pytest.mark.slow
def test_compact_resnet18_random_30_percent_equals_masked():
    _check_resnet(resnet18, torch.randn(2, 3, 16, 16))


@pytest.mark.slow
def test_compact_resnet50_random_30_percent_equals_masked():
    _check_resnet(resnet50, torch.randn(2, 3, 16, 16))


def _norm_and_head_count(model, head="fc"):
    norms = sum(
        m.weight.numel() + m.bias.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d)
    )
    head_module = model.get_submodule(head)
    return norms + head_module.weight.numel() + head_module.bias.numel()


def test_compact_splora_learned_parameters_match_formula():
    model = randomise(spa.adapt(ResidualNet(), spa.SPLoRAConfig(rank=3)))
    x = torch.randn(2, 3, 8, 8)
    _prune_randomly(model, x, 0.5)
    expected_adapters = sum(
        3 * (int(l.out_mask.sum()) + int(l.in_mask.sum())) for _, l in spa.adapter_layers(model)
    )
    masked_count = count_learned_parameters(model)
    compact(model, x)
    expected = expected_adapters + _norm_and_head_count(model)
    assert count_learned_parameters(model) == expected
    assert masked_count == expected  # masked norms/head columns are not counted either


def test_compact_fine_pruning_counts_retained_weights():
    model = randomise(spa.adapt(ResidualNet(), spa.FinePruningConfig()))
    x = torch.randn(2, 3, 8, 8)
    _prune_randomly(model, x, 0.5, ranking="local")
    retained = sum(
        int(l.out_mask.sum()) * int(l.in_mask.sum()) * l.base.weight[0, 0].numel()
        for _, l in spa.adapter_layers(model)
    )
    compact(model, x)
    assert retained == sum(l.base.weight.numel() for _, l in spa.adapter_layers(model))
    assert count_learned_parameters(model) == retained + _norm_and_head_count(model)
    # Base weights: stem 8*3*9 + conv_a 16*8*9 + conv_b 16*16*9 + shortcut 16*8 = 3800.
    assert density(model) == pytest.approx(retained / 3800)


def test_compact_keeps_trainable_flags_and_all_ones_masks():
    model = spa.adapt(ResidualNet(), spa.SPLoRAConfig(rank=2, trainable=("head",)))
    x = torch.randn(2, 3, 8, 8)
    _prune_randomly(model, x, 0.5)
    compact(model)
    assert not model.bn_b.weight.requires_grad and model.fc.weight.requires_grad
    for _, layer in spa.adapter_layers(model):
        assert layer.out_mask.all() and layer.in_mask.all()
        assert layer.down.requires_grad and not layer.base.weight.requires_grad
    assert not hasattr(model.bn_b, "spa_out_mask")
    assert set(model.state_dict()) == set(
        spa.adapt(ResidualNet(), spa.SPLoRAConfig(rank=2)).state_dict()
    )
