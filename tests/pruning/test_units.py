"""Head and FFN channel groups built from family descriptions (positions, kept state, density)."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

import spa
from spa.errors import ConfigError, SpaWarning, UnsupportedLayerError
from spa.families import describe
from spa.pruning import apply_masks, channel_groups, compute_masks, refresh_groups
from tests._transformers import FFN, bert, gpt2, llama, swin
from tests.conftest import mlp

HEAD_DIM = 8


def _member(group, suffix):
    (member,) = [m for m in group.members if m.name.endswith(suffix)]
    return member


def _rows_of(member, channel):
    return {p for p, c in zip(member.positions, member.channels) if c == channel}


def _head_rows(head):
    return set(range(head * HEAD_DIM, (head + 1) * HEAD_DIM))


def test_llama_head_group_pairs_each_kv_head_with_its_query_heads():
    model = spa.adapt(llama(), spa.SPLoRAConfig(rank=2))
    heads = channel_groups(model, None, units=("heads",))[0]
    assert heads.size == 2  # key/value heads; 4 query heads -> 2 per key/value head
    for j in range(2):
        query_rows = _head_rows(2 * j) | _head_rows(2 * j + 1)
        assert _rows_of(_member(heads, "q_proj"), j) == query_rows
        assert _rows_of(_member(heads, "k_proj"), j) == _head_rows(j)
        assert _rows_of(_member(heads, "v_proj"), j) == _head_rows(j)
        assert _rows_of(_member(heads, "o_proj"), j) == query_rows
    assert _member(heads, "o_proj").role == "in"
    assert {m.role for m in heads.members if not m.name.endswith("o_proj")} == {"out"}


def test_gpt2_head_group_takes_the_head_in_each_third_of_the_fused_projection():
    model = spa.adapt(gpt2(), spa.SPLoRAConfig(rank=2))
    heads = channel_groups(model, None, units=("heads",))[0]
    fused = _member(heads, "c_attn")
    assert heads.size == 4 and fused.mask_size == 96
    for h in range(4):
        expected = _head_rows(h) | {32 + r for r in _head_rows(h)} | {64 + r for r in _head_rows(h)}
        assert _rows_of(fused, h) == expected
        assert _rows_of(_member(heads, "attn.c_proj"), h) == _head_rows(h)


def test_llama_ffn_group_couples_gate_and_up_rows_with_down_columns():
    model = spa.adapt(llama(), spa.SPLoRAConfig(rank=2))
    (ffn,) = channel_groups(model, None, units=("ffn",))[:1]
    assert ffn.size == FFN
    for suffix, role in (("gate_proj", "out"), ("up_proj", "out"), ("down_proj", "in")):
        member = _member(ffn, suffix)
        assert member.role == role
        assert list(member.positions) == list(member.channels) == list(range(FFN))


@pytest.mark.parametrize(
    ("units", "roots"),
    [(("heads",), {"q_proj"}), (("ffn",), {"gate_proj"}), (None, {"q_proj", "gate_proj"})],
)
def test_channel_groups_units_choose_what_is_pruned(units, roots):
    model = spa.adapt(llama(), spa.SPLoRAConfig(rank=2))
    groups = channel_groups(model, None, units=units)
    assert {g.root.rsplit(".", 1)[-1] for g in groups} == roots
    assert len(groups) == 2 * len(roots)  # one group per block and unit


def test_channel_groups_rejects_unknown_units():
    model = spa.adapt(bert(), spa.SPLoRAConfig(rank=2))
    with pytest.raises(ConfigError, match="residual"):
        channel_groups(model, None, units=("residual",))


def test_channel_groups_units_need_a_described_family():
    model = spa.adapt(mlp(), spa.SPLoRAConfig(rank=2))
    with pytest.raises(ConfigError, match="described family"):
        channel_groups(model, torch.randn(2, 12), units=("heads",))


def test_unit_member_that_is_not_linear_or_adapter_is_refused_by_name():
    model = spa.adapt(gpt2(), spa.SPLoRAConfig(rank=2, exclude_modules=r"h\.0\.attn\.c_attn"))
    with pytest.raises(UnsupportedLayerError, match=r"h\.0\.attn\.c_attn: a Conv1D"):
        channel_groups(model, None)


def test_refreshed_groups_see_a_masked_head_as_removed():
    model = spa.adapt(bert(), spa.SPLoRAConfig(rank=2))
    groups = channel_groups(model, None, units=("heads",))
    scores = {i: torch.arange(g.size, dtype=torch.float32) for i, g in enumerate(groups)}
    masks = compute_masks(groups, scores, density=0.9, ranking="local")
    apply_masks(model, masks)
    kept = [g.kept for g in refresh_groups(model, groups)]
    rebuilt = [g.kept for g in channel_groups(model, None, units=("heads",))]
    assert kept == rebuilt
    assert all(k[0] is False and all(k[1:]) for k in kept)  # the lowest-scored head went


def test_head_masks_reach_the_density_counted_from_the_masks():
    model = spa.adapt(llama(), spa.SPLoRAConfig(rank=2))
    groups = channel_groups(model, None)
    scores = {i: torch.rand(g.size) for i, g in enumerate(groups)}
    masks = compute_masks(groups, scores, density=0.7)
    apply_masks(model, masks)
    kept = total = 0
    for _, layer in spa.adapters.protocols.adapter_layers(model):
        weight = layer.base.weight
        kept += int(layer.out_mask.sum()) * int(layer.in_mask.sum())
        total += math.prod(weight.shape)
    assert kept / total <= 0.7
    assert kept / total > 0.5  # no more than needed: the largest removable unit is small
    query = model.model.model.layers[0].self_attn.q_proj
    removed_rows = int((~query.out_mask).sum())
    assert removed_rows % (2 * HEAD_DIM) == 0  # whole query-head pairs of a key/value head


def test_swin_head_groups_take_each_head_column_of_the_relative_position_bias_table():
    base = swin().eval()
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2))
    assert describe(model).name == "swin"
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpaWarning)  # described: nothing is traced or left out
        groups = channel_groups(model, None)
    assert [g.size for g in groups] == [2, 64, 2, 64, 4, 128, 4, 128]  # heads, FFN per block
    heads = groups[4]  # stage 2, block 0: 4 heads of 8
    (table,) = [m for m in heads.members if m.role == "param"]
    assert table.name.endswith(
        "layers.1.blocks.0.attention.relative_position_bias.relative_position_bias_table"
    )
    assert table.positions == table.channels == (0, 1, 2, 3) and table.mask_size == 4
    for h in range(4):
        assert _rows_of(_member(heads, "q_proj"), h) == _head_rows(h)
        assert _rows_of(_member(heads, "o_proj"), h) == _head_rows(h)
    masks = {}  # remove head 1 of the group
    for member in heads.members:
        mask = torch.ones(member.mask_size, dtype=torch.bool)
        mask[[p for p, c in zip(member.positions, member.channels) if c == 1]] = False
        masks[member.name] = {"in_mask" if member.role == "in" else "out_mask": mask}
    apply_masks(model, masks)
    spa.compact(model)
    attention = model.model.swin.encoder.layers[1].blocks[0].attention
    original = base.model.swin.encoder.layers[1].blocks[0].attention
    expected = original.relative_position_bias.relative_position_bias_table[:, [0, 2, 3]]
    assert torch.equal(attention.relative_position_bias.relative_position_bias_table, expected)
    assert attention.num_attention_heads == 3


@pytest.mark.slow
def test_undescribed_transformer_is_traced_and_leaves_out_what_it_cannot_slice():
    import transformers

    config = transformers.Swinv2Config(
        image_size=16, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
        window_size=2, num_labels=3,
    )  # fmt: skip
    model = spa.adapt(transformers.Swinv2ForImageClassification(config), spa.SPLoRAConfig(rank=2))
    with pytest.warns(SpaWarning, match="logit_scale"):
        groups = channel_groups(model, torch.randn(1, 3, 16, 16))
    # The value projections' output channels reach the per-head logit scale: never pruned.
    outputs = {m.name for group in groups for m in group.members if m.role == "out"}
    assert groups and not any(name.endswith("attention.self.value") for name in outputs)


def test_undescribed_transformer_that_tracing_fails_on_is_refused_by_model_type(monkeypatch):
    import transformers

    import spa.pruning.groups as groups_module

    def fail(*args):
        raise RuntimeError("cannot trace")

    config = transformers.BeitConfig(
        image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=3,
    )  # fmt: skip
    model = spa.adapt(transformers.BeitForImageClassification(config), spa.SPLoRAConfig(rank=2))
    monkeypatch.setattr(groups_module, "_traced_groups", fail)
    with pytest.raises(UnsupportedLayerError, match="could not trace this 'beit' model"):
        channel_groups(model, torch.randn(1, 3, 8, 8))


def test_iterative_prune_with_ffn_units_keeps_every_head():
    from spa.pruning import ChannelPruningConfig, IterativeSchedule, iterative_prune

    model = spa.adapt(llama(), spa.SPLoRAConfig(rank=2))
    schedule = IterativeSchedule(epochs_per_step=0, step=0.1, target=0.8)
    config = ChannelPruningConfig(units=("ffn",), schedule=schedule)
    densities = []
    iterative_prune(
        model, lambda m, e: None, None, config, hook=lambda m, d, i: densities.append(d)
    )
    assert len(densities) == 2
    assert spa.density(model) <= 0.8
    for block in model.model.model.layers:
        assert bool(block.self_attn.q_proj.out_mask.all())
        assert not bool(block.mlp.up_proj.out_mask.all())


def test_channel_pruning_config_rejects_unknown_units():
    from spa.pruning import ChannelPruningConfig

    with pytest.raises(ConfigError, match="units"):
        ChannelPruningConfig(units=("residual",))
    assert ChannelPruningConfig(units=("hidden",)).units == ("hidden",)


@pytest.mark.parametrize("density", [0.5, 0.7])
def test_local_ranking_keeps_the_same_heads_and_neurons_in_every_layer(density):
    from spa.families import block_layouts, describe, head_counts
    from spa.models.tiny_lm import tiny_llama

    # hidden 64, head_dim 16, 2 key/value heads of 2 query heads each, 128 SwiGLU neurons.
    model = spa.adapt(tiny_llama(num_layers=3), spa.SPLoRAConfig(rank=2))
    groups = channel_groups(model, None)
    scores = {i: torch.rand(g.size) for i, g in enumerate(groups)}  # different in every layer
    apply_masks(model, compute_masks(groups, scores, density=density, ranking="local"))
    # Explicit count: a fraction f keeps 2 - floor(2f) key/value heads (each: 2 x 16 query rows,
    # 16 key and 16 value rows, 32 output columns, 64 wide) and 128 - floor(128f) neurons (gate,
    # up rows and a down column, 64 wide); local ranking takes the smallest f reaching density.
    per_kv_head, per_neuron, layer = 96 * 64, 3 * 64, 2 * 96 * 64 + 128 * 3 * 64
    for step in range(257):
        kv_heads = max(1, 2 - math.floor(2 * step / 256))
        neurons = max(1, 128 - math.floor(128 * step / 256))
        if (kv_heads * per_kv_head + neurons * per_neuron) / layer <= density:
            break
    compacted = spa.compact(model)
    family = describe(compacted)
    counts = [head_counts(compacted, layout) for layout in block_layouts(compacted, family)]
    assert [(c["kv_heads"], c["heads"], c["neurons"]) for c in counts] == [
        (kv_heads, 2 * kv_heads, neurons)
    ] * 3
