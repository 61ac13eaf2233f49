"""Adapter layers stand in for the layer they wrap wherever a real model reads it (issue 21)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spa
from spa.adapters.splora import SPLoRALayer
from tests._traced_models import build


def _zero_adapters(model: nn.Module) -> None:
    """Adapters that add nothing: the adapted model must compute the base model exactly."""
    with torch.no_grad():
        for _, layer in spa.adapter_layers(model):
            layer.up.zero_()


def test_splora_bias_is_the_masked_base_bias():
    layer = SPLoRALayer(nn.Linear(4, 6), rank=2)
    layer.out_mask[2] = False
    expected = layer.base.bias.detach().clone()
    expected[2] = 0
    torch.testing.assert_close(layer.bias, expected)


def test_adapted_multihead_attention_reads_out_proj_bias_and_weight():
    attention = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(2, 3, 8)
    with torch.no_grad():
        expected = attention(x, x, x)[0]
    attention.out_proj = SPLoRALayer(attention.out_proj, rank=2)
    attention.out_proj.up.data.zero_()
    with torch.no_grad():
        torch.testing.assert_close(attention(x, x, x)[0], expected, rtol=1e-5, atol=1e-6)


def test_siglip_with_pooling_head_runs_adapted_as_its_base():
    model, x = build("siglip_vision")
    base = copy.deepcopy(model)
    spa.adapt(model, spa.SPLoRAConfig(rank=2))
    assert any("head.attention.out_proj" in name for name, _ in spa.adapter_layers(model))
    _zero_adapters(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), base(x), rtol=1e-5, atol=1e-5)


def test_falcon_linear_subclass_is_adapted_and_fuses_to_the_same_outputs():
    model, x = build("falcon")
    base = copy.deepcopy(model)
    spa.adapt(model, spa.SPLoRAConfig(rank=2))
    adapted = {name for name, _ in spa.adapter_layers(model)}
    assert "model.transformer.h.0.self_attention.query_key_value" in adapted
    _zero_adapters(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), base(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(spa.fuse(model)(x), base(x), rtol=1e-5, atol=1e-5)


def test_linear_subclass_computing_something_else_is_still_refused():
    class Scaled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(spa.errors.NoTargetsError, match="Scaled overrides Linear.forward"):
        spa.adapt(nn.Sequential(Scaled(4, 4), nn.Linear(4, 2)), spa.SPLoRAConfig(rank=2))


def test_wav2vec2_spec_augment_writes_into_an_adapter_output_while_training():
    model, x = build("wav2vec2")
    spa.adapt(model, spa.SPLoRAConfig(rank=2))
    model.train()  # SpecAugment masks time steps in place in the feature projection's output
    loss = F.cross_entropy(model(x), torch.tensor([0, 2]))
    loss.backward()
    grads = [layer.down.grad for _, layer in spa.adapter_layers(model)]
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads)


@pytest.mark.parametrize("rule", ["epsilon", "zplus"])
def test_lrp_scores_deberta_v2_whose_projections_also_run_on_position_embeddings(rule):
    model, x = build("deberta_v2")
    spa.adapt(model, spa.SPLoRAConfig(rank=2))
    relevance = spa.pruning.lrp(model, x, torch.tensor([0, 2]), rule=rule)
    for name, value in relevance.layers.items():
        assert bool(torch.isfinite(value).all()), name
    query = relevance.layers["model.deberta.encoder.layer.0.attention.self.query_proj"]
    assert query.shape == (2, 5, 32) and bool(query.abs().sum() > 0)
