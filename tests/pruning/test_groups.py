"""Channel groups from the dependency graph, and the Torch-Pruning pruner for SPLoRA layers."""

from __future__ import annotations

import pytest
import torch

import spa
from spa.errors import ConfigError
from spa.pruning import channel_groups, remove_channels
from tests.pruning._nets import ConcatNet, ConvNet, ResidualNet, mlp


def _members(group):
    return {(m.name, m.role) for m in group.members}


def test_channel_groups_residual_couples_shortcut_block_norms_and_head():
    model = spa.adapt(ResidualNet(), spa.SPLoRAConfig(rank=2))
    groups = channel_groups(model, torch.randn(2, 3, 8, 8))
    by_root = {frozenset(_members(g)) for g in groups}
    assert (
        frozenset(
            {
                ("shortcut", "out"),
                ("conv_b", "out"),
                ("bn_b", "norm"),
                ("bn_s", "norm"),
                ("fc", "in"),
            }
        )
        in by_root
    )
    assert frozenset({("conv_a", "out"), ("bn_a", "norm"), ("conv_b", "in")}) in by_root
    assert (
        frozenset({("stem", "out"), ("bn", "norm"), ("conv_a", "in"), ("shortcut", "in")})
        in by_root
    )
    assert all(("fc", "out") not in _members(g) for g in groups)


def test_channel_groups_grouped_conv_couples_same_position_in_every_group():
    model = spa.adapt(ConvNet(2), spa.SPLoRAConfig(rank=2))
    groups = channel_groups(model, torch.randn(2, 4, 6, 6))
    first = next(g for g in groups if ("conv1", "out") in _members(g))
    # conv2 has 2 groups of 4 inputs: conv1 channels c and c + 4 must go together.
    assert first.size == 4
    conv1 = next(m for m in first.members if m.name == "conv1")
    channel_of = dict(zip(conv1.positions, conv1.channels))
    assert all(channel_of[c] == channel_of[c + 4] for c in range(4))
    conv2_in = next(m for m in first.members if m.name == "conv2" and m.role == "in")
    assert conv2_in.mask_size == 4  # SPLoRA in_mask is in/groups long


def test_channel_groups_depthwise_conv_couples_input_and_output():
    model = spa.adapt(ConvNet(1), spa.SPLoRAConfig(rank=2))
    groups = channel_groups(model, torch.randn(2, 4, 6))
    group = next(g for g in groups if ("conv3", "out") in _members(g))
    names = _members(group)
    assert {("conv2", "out"), ("bn2", "norm"), ("bn3", "norm"), ("fc", "in")} <= names
    conv2 = next(m for m in group.members if m.name == "conv2")
    conv3 = next(m for m in group.members if m.name == "conv3")
    assert dict(zip(conv2.positions, conv2.channels)) == dict(zip(conv3.positions, conv3.channels))


def test_channel_groups_concat_maps_branch_channels_to_consumer_columns():
    model = spa.adapt(ConcatNet(), spa.SPLoRAConfig(rank=2))
    groups = channel_groups(model, torch.randn(2, 3, 6, 6))
    right = next(g for g in groups if ("right", "out") in _members(g))
    mix = next(m for m in right.members if m.name == "mix")
    bn = next(m for m in right.members if m.name == "bn")
    assert mix.positions == tuple(range(4, 10))
    assert bn.positions == tuple(range(4, 10))


def test_channel_groups_leaves_modes_and_trainable_flags_unchanged(residual_net):
    model = spa.adapt(residual_net, spa.SPLoRAConfig(rank=2))
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    channel_groups(model, torch.randn(2, 3, 8, 8))
    assert model.training
    assert flags == [p.requires_grad for p in model.parameters()]


def test_channel_groups_rejects_unadapted_model():
    with pytest.raises(ConfigError, match="adapt the model first"):
        channel_groups(mlp(), torch.randn(2, 12))


def test_remove_channels_slices_splora_base_factors_masks_and_indices():
    base = torch.nn.Conv2d(6, 8, 3, padding=1)
    layer = spa.SPLoRALayer(base, rank=2)
    down, up = layer.down.detach().clone(), layer.up.detach().clone()
    remove_channels(layer, out_positions=[1, 5], in_positions=[0])
    keep_out, keep_in = [0, 2, 3, 4, 6, 7], [1, 2, 3, 4, 5]
    assert layer.out_indices.tolist() == keep_out
    assert layer.in_indices.tolist() == keep_in
    torch.testing.assert_close(layer.base.weight, base.weight[keep_out][:, keep_in])
    torch.testing.assert_close(layer.base.bias, base.bias[keep_out])
    torch.testing.assert_close(layer.down, down[keep_out])
    torch.testing.assert_close(layer.up, up[:, keep_in])
    assert layer.out_mask.all() and layer.out_mask.numel() == 6
    assert layer.base_shape == (8, 6, 3, 3)


def test_remove_channels_keeps_frozen_norm_parameters_frozen():
    norm = torch.nn.BatchNorm2d(6).requires_grad_(False)
    remove_channels(norm, out_positions=[0, 3])
    assert norm.num_features == 4 and norm.weight.shape == (4,)
    assert not norm.weight.requires_grad


def test_channel_groups_trace_a_flattening_mlp_from_one_sample():
    from spa.models import mlp

    model = spa.adapt(mlp(64, 32, 10), spa.SPLoRAConfig(rank=4))
    groups = channel_groups(model, torch.randn(1, 1, 8, 8))  # Torch-Pruning fails on batch 1
    assert [g.size for g in groups] == [32]
