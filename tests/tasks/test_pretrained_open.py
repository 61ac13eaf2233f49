"""`spa.save_pretrained` on the open-world families: experts re-stacked with zero padding,
head sizes a config derives from hidden / heads, and one-line refusals before writing."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import transformers

import spa
from spa.errors import ConfigError, SpaWarning
from spa.families import FAMILIES, Example, split_experts
from spa.pruning import apply_masks, channel_groups, compute_masks, score


def _build(example: Example) -> torch.nn.Module:
    torch.manual_seed(0)
    config = getattr(transformers, example.config)(**example.options)
    return getattr(transformers, example.model)(config).eval()


def _example(family: str, name: str | None = None) -> Example:
    examples = FAMILIES.get(family).examples
    return next(e for e in examples if name is None or e.name == name)


def _adapted(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with SPLoRA rank 2 and non-zero adapters (the export must fuse them)."""
    spa.adapt(model, spa.SPLoRAConfig(rank=2))
    for _, layer in spa.adapter_layers(model):
        torch.nn.init.normal_(layer.up, std=0.05)
    return model.eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _close(actual, expected):
    scale = expected.abs().max()
    torch.testing.assert_close(actual / scale, expected / scale, rtol=0, atol=1e-4)


IDS = torch.randint(3, 40, (2, 6), generator=torch.Generator().manual_seed(1))

MOE = [("mixtral", "gate_up_proj"), ("qwen2-moe", "gate_up_proj")]


def _uneven_experts(family: str) -> torch.nn.Module:
    """A tiny MoE decoder whose experts keep different widths (global ranking of made-up scores
    that favour later experts), adapted and masked."""
    model = _adapted(_build(_example(family)))
    groups = channel_groups(model, None, units=("ffn",))
    scores = {
        i: torch.linspace(0, 1, g.size) + 0.3 * (i % 4) * ("experts" in g.root)
        for i, g in enumerate(groups)
    }
    apply_masks(model, compute_masks(groups, scores, density=0.6, ranking="global"))
    return model


@pytest.mark.slow
@pytest.mark.parametrize("family", [f for f, _ in MOE])
def test_experts_of_different_widths_are_padded_and_reload_equal(family, tmp_path):
    model = _uneven_experts(family)
    plain = spa.fuse(spa.compact(spa.shared_copy(model, frozen_only=True))).eval()
    blocks = plain.model.layers
    widths = [[layer.out_features // 2 for layer in b.mlp.experts.gate_up] for b in blocks]
    assert len({w for row in widths for w in row}) > 1  # the experts really differ
    # One width for all: the widest, rounded up to 16 bytes of float32 (grouped_mm's rule).
    width = math.ceil(max(max(row) for row in widths) / 4) * 4
    padding = 1 - sum(map(sum, widths)) / (width * sum(map(len, widths)))
    with pytest.warns(SpaWarning, match=re.escape(f"to {width}: {padding:.1%} of the exported")):
        spa.save_pretrained(model, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    key = "moe_intermediate_size" if family == "qwen2-moe" else "intermediate_size"
    assert config[key] == width
    loaded = getattr(transformers, type(model).__name__).from_pretrained(tmp_path / "out").eval()
    _close(_logits(loaded, IDS), _logits(plain, IDS))
    _close(_logits(loaded, IDS), _logits(model, IDS))
    for block, split, row in zip(loaded.model.layers, blocks, widths):
        gate_up, down = block.mlp.experts.gate_up_proj, block.mlp.experts.down_proj
        for expert, kept in enumerate(row):
            gate, up = split.mlp.experts.gate_up[expert].weight.chunk(2)
            assert torch.equal(gate_up[expert, :kept], gate)
            assert torch.equal(gate_up[expert, width : width + kept], up)
            assert torch.equal(down[expert, :, :kept], split.mlp.experts.down[expert].weight)
            assert (
                not gate_up[expert, kept:width].any() and not gate_up[expert, width + kept :].any()
            )
            assert not down[expert, :, kept:].any()


def test_split_experts_of_a_reloaded_model_still_compute_its_outputs():
    # The split view the export starts from computes what transformers' 3-D experts compute.
    model = _build(_example("mixtral"))
    expected = _logits(model, IDS)
    split_experts(model)
    _close(_logits(model, IDS), expected)


@pytest.mark.parametrize(
    ("family", "name", "config_heads", "config_kv"),
    [
        ("gpt2", None, "n_head", "n_head"),
        ("opt", None, "num_attention_heads", "num_attention_heads"),
        ("llama", None, "num_attention_heads", "num_key_value_heads"),
        ("llama", "qwen3", "num_attention_heads", "num_key_value_heads"),  # head_dim 128
    ],
)
def test_pretrained_round_to_is_the_hidden_width_of_one_heads_group(
    family, name, config_heads, config_kv
):
    model = _build(_example(family, name))
    config = model.config
    hidden = getattr(config, "n_embd", None) or config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // getattr(config, config_heads)
    heads, kv_heads = getattr(config, config_heads), getattr(config, config_kv)
    expected = {"hidden": heads // kv_heads * head_dim} if heads * head_dim == hidden else {}
    assert spa.pretrained_round_to(model) == expected


@pytest.mark.slow
@pytest.mark.parametrize(("family", "heads", "hidden"), [("gpt2", "n_head", "n_embd")])
def test_heads_and_hidden_pruned_together_export_a_derived_head_size(
    family, heads, hidden, tmp_path
):
    model = _adapted(_build(_example(family)))
    before = model.config.to_dict()
    round_to = spa.pretrained_round_to(model)
    groups = channel_groups(model, None, units=("heads", "hidden"))
    masks = compute_masks(
        groups, score(model, "weight", groups), 0.4, ranking="local", round_to=round_to
    )
    apply_masks(model, masks)
    spa.save_pretrained(model, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert 0 < config[heads] < before[heads]
    # The config's derived head size is the model's: hidden / heads as before.
    assert config[hidden] * before[heads] == before[hidden] * config[heads]
    loaded = getattr(transformers, type(model).__name__).from_pretrained(tmp_path / "out").eval()
    _close(_logits(loaded, IDS), _logits(model, IDS))


def _masked(model, units, **options):
    groups = channel_groups(model, None, units=units)
    apply_masks(model, compute_masks(groups, score(model, "weight", groups), 0.5, **options))
    return model


@pytest.mark.parametrize(
    ("family", "name", "units", "message"),
    [
        (
            "gpt2",
            None,
            ("heads",),
            r"keeps \d attention heads of 8 channels and a hidden size of 32.*pretrained_round_to",
        ),
        ("bloom", None, ("ffn",), r"BloomConfig has no FFN width \(.* = 128\)"),
        ("bert", None, ("hidden",), r"bert.pooler.dense writes 32 channels"),
        ("llama", "gemma2", ("hidden",), r"buffer model.embed_tokens.embed_scale .* as 4 \("),
    ],
)
def test_what_the_config_cannot_describe_is_refused_in_one_line_before_writing(
    family, name, units, message, tmp_path
):
    model = _masked(_adapted(_build(_example(family, name))), units, ranking="local")
    if name == "gemma2":  # sqrt(16 kept hidden channels), while the model scales by sqrt(32)
        assert int(model.model.norm.spa_out_mask.sum()) == 16
    with pytest.raises(ConfigError, match=message) as refusal:
        spa.save_pretrained(model, tmp_path / "out")
    assert "\n" not in str(refusal.value)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left behind


@pytest.mark.slow
def test_deit_heads_export_through_the_head_dim_its_model_code_reads(tmp_path):
    # DeiTConfig has no head_dim field, but DeiT's attention reads `config.head_dim` when set:
    # heads alone export, the hidden size untouched (a family no issue names).
    from tests._transformers import deit

    model = _masked(_adapted(deit().model), ("heads",), ranking="local")
    pixels = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    spa.save_pretrained(model, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["head_dim"], config["hidden_size"]) == (8, 32)
    assert 0 < config["num_attention_heads"] < 4
    loaded = transformers.DeiTForImageClassification.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        _close(loaded(pixel_values=pixels).logits, model(pixel_values=pixels).logits)
