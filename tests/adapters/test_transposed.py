"""transformers' Conv1D (transposed weight) as an adaptable layer; duck-typed norms in adapt."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import spa
from spa.adapters.transposed import as_linear, is_transposed_linear, linear_view, out_features
from spa.pruning import apply_masks
from tests._transformers import gpt2, llama


def test_as_linear_computes_what_conv1d_computes():
    conv = Conv1D(6, 4)  # nf=6 outputs, 4 inputs; weight (4, 6)
    nn.init.normal_(conv.bias)
    x = torch.randn(3, 5, 4)
    expected = x @ conv.weight + conv.bias  # the Conv1D definition, written out
    linear = as_linear(conv)
    assert isinstance(linear, nn.Linear) and linear.weight.shape == (6, 4)
    torch.testing.assert_close(linear(x), expected)
    assert out_features(conv) == 6 and out_features(linear) == 6


def test_as_linear_shares_or_copies_storage_as_asked():
    conv = Conv1D(6, 4)
    assert linear_view(conv).weight.data_ptr() == conv.weight.data_ptr()
    assert as_linear(conv).weight.data_ptr() != conv.weight.data_ptr()  # share=False copies
    plain = nn.Linear(4, 6)
    assert linear_view(plain) is plain and not is_transposed_linear(plain)


def test_adapt_gpt2_adapts_conv1d_layers_and_fuses_exactly():
    model = gpt2().eval()
    spa.adapt(model, spa.SPLoRAConfig(rank=2))
    report = model.spa_report
    assert len(report.linearised) == 8 and set(report.linearised) == set(report.adapted)
    layer = model.model.transformer.h[0].mlp.c_fc
    with torch.no_grad():
        layer.up.normal_()
    mask = torch.ones(64, dtype=torch.bool)
    mask[::3] = False
    apply_masks(model, {"model.transformer.h.0.mlp.c_fc": {"out_mask": mask}})
    x = torch.randn(2, 5, 32)
    fused = spa.fuse(model)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-6)
    assert not any(is_transposed_linear(m) for m in fused.modules())


def test_adapted_conv1d_equals_the_original_layer_at_zero_adapter():
    original = gpt2().eval()
    model = copy.deepcopy(original)
    spa.adapt(model, spa.SPLoRAConfig(rank=2))
    for _, layer in spa.adapters.protocols.adapter_layers(model):
        with torch.no_grad():
            layer.up.zero_()
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), rtol=1e-5, atol=1e-6)


def test_adapt_lists_unsupported_weight_layers_as_skipped():
    class Bilinear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 4))

        def forward(self, x):
            return x @ self.weight

    model = nn.Sequential(nn.Linear(4, 4), Bilinear(), nn.Linear(4, 2))
    spa.adapt(model, spa.SPLoRAConfig(rank=1))
    assert "Bilinear is not an adaptable layer" in model.spa_report.skipped["1"]


def test_rmsnorm_counts_as_norm_and_the_report_lists_it():
    model = spa.adapt(llama(), spa.SPLoRAConfig(rank=2, trainable=("norm",)))
    norms = [n for n, m in model.named_modules() if type(m).__name__ == "LlamaRMSNorm"]
    assert len(norms) == 5  # two per block and the final norm
    assert sorted(model.spa_report.trainable["norm"]) == sorted(f"{n}.weight" for n in norms)
    for name in norms:
        assert model.get_submodule(name).weight.requires_grad
    by_kind = spa.accounting.learned_parameters(model).by_kind
    assert by_kind["norm"] == 5 * 32


@pytest.mark.parametrize(
    "norm", [nn.LayerNorm(4), nn.GroupNorm(2, 4), nn.BatchNorm1d(4)], ids=lambda m: type(m).__name__
)
def test_torch_norms_are_listed_as_trainable(norm):
    model = nn.Sequential(nn.Linear(4, 4), norm, nn.Linear(4, 2))
    spa.adapt(model, spa.SPLoRAConfig(rank=1, trainable=("norm",)))
    assert model.spa_report.trainable == {"norm": ["1.weight", "1.bias"]}
