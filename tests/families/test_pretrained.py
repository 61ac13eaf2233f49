"""`config_values`: the transformers config counts of a compacted model, or a one-line refusal."""

from __future__ import annotations

import copy

import pytest
import torch

import spa
from spa.errors import ConfigError
from spa.families import config_values, describe
from spa.models.tiny_lm import tiny_llama
from spa.pruning import apply_masks, channel_groups, compute_masks, score
from tests._transformers import FFN, HEADS, HIDDEN, bert, gpt2


def pruned(base, units=None, density=0.5, ranking="local", scores=None, round_to=None):
    """`base` adapted with SPLoRA (non-zero adapters) and masked by transformer units."""
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=4))
    for _, layer in spa.adapter_layers(model):
        torch.nn.init.normal_(layer.up, std=0.02)
    groups = channel_groups(model, None, units=units)
    scores = scores or score(model, "weight", groups)
    masks = compute_masks(groups, scores, density=density, ranking=ranking, round_to=round_to)
    apply_masks(model, masks)
    return model.eval()


def _values(model):
    compacted = spa.compact(model)
    return config_values(compacted, describe(compacted), compacted.config)


def test_llama_values_are_the_kept_heads_key_value_heads_and_neurons():
    values = _values(pruned(tiny_llama()))
    # density 0.5 of (2 key/value heads x 96 x 64) + (128 neurons x 3 x 64) per layer: one
    # key/value head (2 query heads) and 64 neurons stay in each layer (see test_units).
    assert values == {
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 64,
        "head_dim": 16,
        "hidden_size": 64,
    }


def test_gpt2_values_use_its_config_names():
    model = pruned(gpt2().model, units=("ffn",), density=0.75)
    kept = model.transformer.h[0].mlp.c_fc.out_mask.sum().item()
    assert 0 < kept < FFN
    assert _values(model) == {"n_head": HEADS, "n_inner": kept, "n_embd": HIDDEN}


def test_layers_with_different_head_counts_are_refused_naming_the_option():
    model = spa.adapt(tiny_llama(), spa.SPLoRAConfig(rank=2))
    groups = channel_groups(model, None, units=("heads",))
    scores = {i: torch.ones(g.size) for i, g in enumerate(groups)}
    scores[0] = torch.tensor([0.0, 1.0])  # only layer 0's first key/value head is removed
    apply_masks(model, compute_masks(groups, scores, density=0.95))
    message = (
        r"model.layers.1 keeps 4 attention heads, model.layers.0 keeps 2; transformers' "
        r"LlamaConfig has one num_attention_heads for every layer: prune with ranking='local'"
    )
    with pytest.raises(ConfigError, match=message):
        _values(model)


def test_removed_heads_of_a_family_that_derives_the_head_size_are_refused():
    model = pruned(bert().model, units=("heads",), density=0.7)
    with pytest.raises(ConfigError, match=r"BertConfig derives the head size.*units=\('ffn',\)"):
        _values(model)


def test_a_family_with_per_stage_config_lists_is_refused_before_anything_is_written(tmp_path):
    import transformers

    config = transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4],
        window_size=2, num_labels=3,
    )  # fmt: skip
    model = transformers.SwinForImageClassification(config).eval()
    with pytest.raises(ConfigError, match=r"num_heads as a list per stage.*--format safetensors"):
        config_values(model, describe(model), model.config)
    with pytest.raises(ConfigError, match="as a list per stage"):
        spa.save_pretrained(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()
