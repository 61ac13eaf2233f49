"""Families matched by structure: variants, refusals naming what did not fit, config copies."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import spa
from spa.errors import ConfigError
from spa.families import FAMILIES, Example, describe, explain, mismatches
from spa.families.llama import DECODER
from spa.pruning import apply_masks, channel_groups, compact, compute_masks
from tests.architectures._open_world import Architecture, registry_cases


def _build(name: str):
    torch.manual_seed(0)
    return next(case for case in registry_cases() if case.name == name).build()


def test_qwen3_and_gemma3_are_llama_like_with_no_family_of_their_own():
    for name in ("qwen3", "gemma2", "gemma3"):
        assert describe(_build(name)).name == "llama"


def test_a_variant_wins_over_the_family_it_refines(monkeypatch):
    llama = FAMILIES.get("llama")
    variant = dataclasses.replace(llama, name="llama-variant", variant_of="llama")
    monkeypatch.setitem(FAMILIES._items, "llama-variant", variant)
    assert describe(_build("llama")).name == "llama-variant"


def test_a_block_module_the_family_does_not_describe_is_named():
    model = _build("qwen3")
    ungated = FAMILIES.get("llama-up-down")  # up -> down: Qwen3's gate_proj is left over
    (reason,) = mismatches(model, ungated)
    assert "not described: mlp.gate_proj" in reason


def test_a_norm_over_all_heads_together_does_not_fit_and_is_named():
    example = Example(
        model="Olmo2ForCausalLM", config="Olmo2Config", kind="decoder", options=DECODER
    )
    model = Architecture("olmo2", example, family="").build()
    # OLMo2's q_norm spans all heads; pretend it has Llama's pre-norm to reach that check.
    for layer in model.model.model.layers:
        layer.input_layernorm = copy.deepcopy(layer.post_attention_layernorm)
    (reason,) = mismatches(model, FAMILIES.get("llama"))
    assert "q_norm normalises 32 channels, not one head's 8" in reason


def test_a_model_type_does_not_decide_the_family():
    model = _build("llama")
    model.model.config.model_type = "an-unknown-type"
    assert describe(model).name == "llama"


def test_two_unrelated_families_that_fit_are_refused_naming_both(monkeypatch):
    twin = dataclasses.replace(FAMILIES.get("llama"), name="llama-twin")
    monkeypatch.setitem(FAMILIES._items, "llama-twin", twin)
    with pytest.raises(ConfigError, match=r"'llama', 'llama-twin'.*variant_of"):
        describe(_build("llama"))


def test_explain_says_per_family_which_modules_did_not_fit():
    model = _build("gpt_neox")
    lines = dict(line.split(": ", 1) for line in explain(model).splitlines())
    assert "gpt_neox" not in lines  # it fits
    assert "self_attn" in lines["llama"]
    assert "block pattern" in lines["gpt2"]  # GPT-2's blocks are `h.<i>`


def test_bloom_heads_are_refused_in_one_line_before_any_mask():
    model = spa.adapt(_build("bloom"), spa.SPLoRAConfig(rank=2))
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with pytest.raises(ConfigError, match="ALiBi.*units=\\('ffn',\\)"):
        channel_groups(model, None, units=("heads", "ffn"))
    after = model.state_dict()
    assert all(torch.equal(after[name], tensor) for name, tensor in before.items())


def test_phi3_compaction_gives_each_attention_its_own_config_with_its_head_count():
    model = spa.adapt(_build("phi3"), spa.SPLoRAConfig(rank=2))
    groups = channel_groups(model, None, units=("heads",))
    scores = {0: torch.tensor([0.0, 1.0]), 1: torch.tensor([1.0, 1.0])}  # block 0 loses one
    apply_masks(model, compute_masks(groups, scores, density=0.95))
    shared = model.model.config
    compacted = compact(copy.deepcopy(model))
    first, second = (layer.self_attn for layer in compacted.model.model.layers)
    assert first.config.num_attention_heads == 2 and first.num_key_value_heads == 1
    assert second.config.num_attention_heads == 4 and second.config is compacted.model.config
    assert shared.num_attention_heads == 4  # the base's config is untouched
    ids = torch.randint(3, 40, (2, 6))
    with torch.no_grad():
        expected = model(ids)
        torch.testing.assert_close(compacted(ids), expected, rtol=0, atol=1e-5)
