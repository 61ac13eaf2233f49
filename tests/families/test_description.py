"""Family descriptions: matching, resolved layouts, counts and attribute synchronisation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from spa.errors import ConfigError
from spa.families import (
    FAMILIES,
    AttentionDescription,
    Family,
    FeedForwardDescription,
    block_layouts,
    describe,
    head_counts,
    per_head_axes,
    sync_attributes,
)
from tests._transformers import CASES, gpt2, llama, swin
from tests.conftest import mlp

IDS = [case.family for case in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_describe_matches_each_family_by_config(case):
    assert describe(case.build()).name == case.family


def test_describe_returns_none_for_models_without_a_described_config():
    assert describe(mlp()) is None


def test_families_registry_lists_the_described_families():
    assert set(FAMILIES.names()) >= {"bert", "vit", "gpt2", "llama", "swin"}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_block_layouts_counts_match_the_config(case):
    model = case.build()
    config = model.model.config
    family = describe(model)
    layouts = block_layouts(model, family)
    assert len(layouts) == case.blocks
    configured = getattr(config, family.config_heads)  # Swin: one count per stage
    stage_heads = configured if isinstance(configured, list) else [configured]
    assert sorted(set(stage_heads)) == sorted({heads for heads, _, _ in case.block_counts()})
    for layout, (heads, width, neurons) in zip(layouts, case.block_counts()):
        kv_heads = getattr(config, family.config_kv_heads) if family.config_kv_heads else heads
        assert layout.head_dim == width // heads
        counts = head_counts(model, layout)
        assert counts["heads"] == heads
        assert counts["kv_heads"] == kv_heads
        assert counts["kv_groups"] == heads // kv_heads
        assert counts["width"] == width
        assert counts["neurons"] == neurons


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_sync_attributes_changes_nothing_on_an_unpruned_model(case):
    assert sync_attributes(case.build()) == []


def test_sync_attributes_sets_gpt2_split_size_and_heads_from_fused_rows():
    model = gpt2()
    attention = model.model.transformer.h[0].attn
    keep = torch.cat([torch.arange(0, 8), torch.arange(32, 40), torch.arange(64, 72)])
    attention.c_attn.weight.data = attention.c_attn.weight.data[:, keep]  # Conv1D: (in, out)
    changed = sync_attributes(model)
    assert attention.split_size == 8 and attention.num_heads == 1
    assert set(changed) == {
        "model.transformer.h.0.attn.num_heads",
        "model.transformer.h.0.attn.split_size",
    }


def test_sync_attributes_sets_llama_groups_and_intermediate_size():
    model = llama()
    block = model.model.model.layers[1]
    for projection in (block.mlp.gate_proj, block.mlp.up_proj):
        projection.weight.data = projection.weight.data[:10]
    block.self_attn.q_proj.weight.data = block.self_attn.q_proj.weight.data[:16]  # 2 of 4 heads
    sync_attributes(model)
    assert block.mlp.intermediate_size == 10
    assert block.self_attn.num_key_value_groups == 1  # 2 query heads over 2 key/value heads


def test_block_layouts_refuses_a_missing_path_naming_it():
    family = Family(
        name="broken",
        blocks=r"(^|\.)layers\.\d+$",
        attention=AttentionDescription(
            module="self_attn", head_dim="head_dim", qkv="self_attn.qkv", output="self_attn.o_proj"
        ),
        ffn=FeedForwardDescription(module="mlp", inputs=("mlp.up_proj",), output="mlp.down_proj"),
    )
    with pytest.raises(ConfigError, match=r"self_attn\.qkv"):
        block_layouts(llama(), family)


def test_block_layouts_refuses_a_model_without_blocks():
    family = describe(llama())
    with pytest.raises(ConfigError, match="block pattern"):
        block_layouts(mlp(), family)


def test_attention_description_needs_separate_or_fused_projections():
    with pytest.raises(ConfigError, match="either query, key and value or one fused qkv"):
        AttentionDescription(module="a", head_dim="d", query="q", output="o")
    with pytest.raises(ConfigError, match="either"):
        AttentionDescription(
            module="a", head_dim="d", query="q", key="k", value="v", qkv="x", output="o"
        )


def test_attention_description_per_head_needs_a_non_negative_axis():
    with pytest.raises(ConfigError, match=r"per_head\['attention.table'\] must be a non-negative"):
        AttentionDescription(
            module="a", head_dim="d", qkv="x", output="o", per_head={"attention.table": -1}
        )


def test_block_layouts_resolve_per_head_tensors_and_refuse_a_missing_one():
    model = swin()
    swin_family = describe(model)
    layouts = block_layouts(model, swin_family)
    table = "attention.relative_position_bias.relative_position_bias_table"
    assert [layout.per_head for layout in layouts] == [
        ((f"model.swin.encoder.layers.{stage}.blocks.{block}.{table}", 1),)
        for stage in (0, 1)
        for block in (0, 1)
    ]
    assert per_head_axes(model) == {path: 1 for layout in layouts for path, _ in layout.per_head}
    assert per_head_axes(llama()) == {}
    broken = dataclasses.replace(
        swin_family,
        attention=dataclasses.replace(swin_family.attention, per_head={"attention.table": 1}),
    )
    with pytest.raises(ConfigError, match=r"blocks\.0\.attention\.table"):
        block_layouts(model, broken)
    too_deep = dataclasses.replace(
        swin_family, attention=dataclasses.replace(swin_family.attention, per_head={table: 2})
    )
    with pytest.raises(ConfigError, match=r"head axis 2 \(it is of shape \(9, 2\)\)"):
        block_layouts(model, too_deep)
