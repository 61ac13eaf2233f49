"""Family descriptions: matching, resolved layouts, counts and attribute synchronisation."""

from __future__ import annotations

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
    sync_attributes,
)
from tests._transformers import CASES, FFN, HEADS, LAYERS, gpt2, llama
from tests.conftest import mlp

IDS = [case.family for case in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_describe_matches_each_family_by_config(case):
    assert describe(case.build()).name == case.family


def test_describe_returns_none_for_models_without_a_described_config():
    assert describe(mlp()) is None


def test_families_registry_lists_the_four_families():
    assert set(FAMILIES.names()) >= {"bert", "vit", "gpt2", "llama"}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_block_layouts_counts_match_the_config(case):
    model = case.build()
    config = model.model.config
    family = describe(model)
    layouts = block_layouts(model, family)
    assert len(layouts) == LAYERS
    kv_heads = getattr(config, family.config_kv_heads) if family.config_kv_heads else HEADS
    for layout in layouts:
        assert layout.head_dim == 32 // getattr(config, family.config_heads)
        counts = head_counts(model, layout)
        assert counts["heads"] == getattr(config, family.config_heads) == HEADS
        assert counts["kv_heads"] == kv_heads
        assert counts["kv_groups"] == HEADS // kv_heads
        assert counts["width"] == 32
        assert counts["neurons"] == FFN


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
        model_types=("llama",),
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
