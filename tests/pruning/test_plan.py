"""`spa.plan` and channel groups on the meta device: a prune is planned without any weight and
equals the plan of the same model holding weights (issue 22 item 4)."""

from __future__ import annotations

import pytest
import torch
import transformers

import spa
from spa.models.tiny_lm import tiny_llama
from spa.pruning import channel_groups

UNITS = ("heads", "ffn", "hidden")


def _on_meta() -> transformers.LlamaForCausalLM:
    with torch.device("meta"):
        return tiny_llama()


def _members(groups) -> list:
    return [(g.unit, g.size, [(m.name, m.role, m.channels) for m in g.members]) for g in groups]


def test_channel_groups_of_a_meta_model_are_the_real_models():
    meta = spa.adapt(_on_meta(), spa.SPLoRAConfig(rank=8))
    assert next(meta.parameters()).is_meta
    real = spa.adapt(tiny_llama(), spa.SPLoRAConfig(rank=8))
    assert _members(channel_groups(meta, None, units=UNITS)) == _members(
        channel_groups(real, None, units=UNITS)
    )


@pytest.mark.slow
def test_a_meta_plan_equals_the_plan_of_the_model_with_weights():
    options = {"units": UNITS, "density": 0.5, "round_to": {"hidden": 4}}
    meta, real = spa.plan(_on_meta(), **options), spa.plan(tiny_llama(), **options)
    assert _members(meta.groups) == _members(real.groups)
    assert (meta.parameters, meta.kept_parameters) == (real.parameters, real.kept_parameters)
    assert (meta.flops, meta.kept_flops) == (real.flops, real.kept_flops)
    assert meta.units == real.units and set(meta.units) == set(UNITS)
    assert meta.kept_parameters < meta.parameters and meta.kept_flops < meta.flops


def test_a_plan_costs_what_the_model_of_the_kept_sizes_costs():
    """Kept parameters and FLOPs against a `transformers` model built from a config holding
    the kept sizes (an independent count: no spa compaction involved)."""
    base = tiny_llama()
    found = spa.plan(base, units=UNITS, density=0.5, round_to={"hidden": 4})
    layers = base.config.num_hidden_layers
    kv_heads = found.units["heads"].kept // layers
    kept = {
        "hidden_size": found.units["hidden"].kept,
        "intermediate_size": found.units["ffn"].kept // layers,
        "num_key_value_heads": kv_heads,
        "num_attention_heads": kv_heads * 2,  # two query heads per key/value head
        "head_dim": base.config.head_dim,
    }
    config = transformers.LlamaConfig(**{**base.config.to_dict(), **kept})
    with torch.device("meta"):
        expected = transformers.LlamaForCausalLM(config)
    ids = {"input_ids": torch.zeros(1, 128, dtype=torch.long, device="meta")}
    assert found.kept_parameters == sum(p.numel() for p in expected.parameters())
    assert found.kept_flops == spa.count_flops(expected, ids)
    assert found.parameters == sum(p.numel() for p in base.parameters())
    assert not any(isinstance(m, spa.SPLoRALayer) for m in base.modules())  # untouched
