"""FLOPs counting and the retained-weight density."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import spa
from spa.errors import ConfigError
from spa.flops import count_flops, count_macs, density


def test_count_flops_linear_and_conv_hand_counts():
    linear = nn.Linear(5, 7, bias=False)
    assert count_flops(linear, torch.randn(3, 5)) == 2 * 3 * 5 * 7
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False)
    # Each output element: in/groups * 3 * 3 multiply-adds.
    assert count_macs(conv, torch.randn(2, 4, 5, 5)) == 2 * 6 * 5 * 5 * 2 * 9


def test_density_counts_masked_rows_and_columns_against_base():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.Flatten())
    spa.adapt(model, spa.FinePruningConfig(head_modules=["3"]))
    model[0].out_mask[1] = False
    model[2].in_mask[1] = False
    retained = 3 * 3 * 9 + 2 * 3
    assert density(model) == pytest.approx(retained / (4 * 3 * 9 + 2 * 4))


def test_density_rejects_unadapted_model():
    with pytest.raises(ConfigError, match="the model has no adapter layer"):
        density(nn.Linear(2, 2))


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_count_flops_counts_attention_matmuls(attention):
    """BERT at sequence length 128: every Linear plus Q K^T and softmax(.) V in each layer."""
    transformers = pytest.importorskip("transformers")
    hidden, layers, seq = 32, 2, 128
    config = transformers.BertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=50,
    )
    config._attn_implementation = attention
    model = transformers.BertModel(config).eval()
    ids = torch.randint(0, 50, (1, seq))
    encoder_linears = layers * (4 * hidden * hidden + 2 * hidden * 64)  # q, k, v, o, FFN
    linear_flops = 2 * seq * encoder_linears + 2 * hidden * hidden  # + pooler on one token
    attention_flops = layers * 2 * (2 * seq * seq * hidden)  # two (S x S x hidden) matmuls
    assert count_flops(model, {"input_ids": ids}) == linear_flops + attention_flops
