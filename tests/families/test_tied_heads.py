"""Heads tied across blocks (`AttentionDescription.tied_heads`, T5): one heads group spans every
block and the first block's position-bias table, so every compacted block keeps the same heads
and the table one column per kept head; UMT5 (a table per block) keeps per-block groups."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

import spa
from spa.errors import ConfigError
from spa.families import FAMILIES
from spa.pruning import apply_masks, channel_groups, compact, compute_masks, score
from tests._transformers import adapted_after_step, assert_close_scaled
from tests.architectures._open_world import Architecture


def _case(family: str) -> Architecture:
    example = FAMILIES.get(family).examples[0]
    return Architecture(example.name, example, family)


def test_tied_heads_are_one_group_over_every_block_and_compact_to_equal_heads():
    torch.manual_seed(0)
    case = _case("t5")
    _, model, x, y = adapted_after_step(case.build(), case.inputs)
    groups = channel_groups(model, x, units=("heads",))
    assert len(groups) == 1
    blocks = {m.name.split(".layer.")[0] for m in groups[0].members}
    assert blocks == {f"model.transformer.encoder.block.{i}" for i in range(2)}
    bias = "model.transformer.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    assert any(m.name == bias and m.role == "param" for m in groups[0].members)
    scores = score(model, "weight", groups)
    apply_masks(model, compute_masks(groups, scores, 0.5, ranking="local"))
    with torch.no_grad():
        masked = model(x)
        compacted = compact(copy.deepcopy(model), x)
        assert_close_scaled(compacted(x), masked)
    blocks = compacted.model.transformer.encoder.block
    heads = [block.layer[0].SelfAttention.n_heads for block in blocks]
    kept = heads[0]
    assert heads == [kept, kept] and kept < 4  # the same heads removed everywhere
    assert blocks[0].layer[0].SelfAttention.relative_attention_bias.weight.shape[1] == kept
    rows = [block.layer[0].SelfAttention.q.base.weight.shape[0] for block in blocks]
    assert rows == [kept * 8, kept * 8]


def test_untied_heads_keep_one_group_per_block():
    torch.manual_seed(0)
    case = _case("umt5")
    _, model, x, _ = adapted_after_step(case.build(), case.inputs)
    groups = channel_groups(model, x, units=("heads",))
    assert len(groups) == 2
    assert all(len({m.name.split(".layer.")[0] for m in g.members}) == 1 for g in groups)


def test_encoder_decoder_t5_prunes_encoder_units_and_refuses_the_hidden_size_in_one_line():
    torch.manual_seed(0)
    options = dict(FAMILIES.get("t5").examples[0].options)
    config = transformers.T5Config(**{**options, "num_decoder_layers": 1})
    model = spa.adapt(transformers.T5ForConditionalGeneration(config), spa.SPLoRAConfig(rank=2))
    ids = torch.randint(1, 40, (2, 6))
    with pytest.raises(ConfigError, match=r"^model family 't5': decoder \(a decoder") as caught:
        channel_groups(model, ids, units=("hidden",))
    assert "\n" not in str(caught.value)
    groups = channel_groups(model, ids, units=("heads", "ffn"))
    assert [g.unit for g in groups] == ["heads", "ffn", "ffn"]  # tied heads, FFN per block
    assert all(m.name.startswith("encoder.") for g in groups for m in g.members)
