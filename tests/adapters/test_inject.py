"""`spa.adapt`: selection, skipping, freezing and gradient flow."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

import spa
from spa.errors import ConfigError, NoTargetsError, UnsupportedLayerError


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.even = nn.Conv2d(8, 8, 2)
        self.up = nn.ConvTranspose2d(8, 8, 3)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.up(self.even(torch.relu(self.bn(self.conv(x)))))
        return self.fc(x.mean(dim=(2, 3)))


def test_adapt_skips_head_and_unsupported_layers_with_reasons(caplog):
    model = _Net()
    with caplog.at_level(logging.INFO, logger="spa"):
        spa.adapt(model, spa.SPLoRAConfig(rank=2))
    report = model.spa_report
    assert report.adapted == ["conv"]
    assert report.head == ["fc"]
    assert "task head" in report.skipped["fc"]
    assert "kernel_size=(2, 2)" in report.skipped["even"]
    assert "ConvTranspose2d" in report.skipped["up"]
    assert model.conv.kind == "splora" and type(model.fc) is nn.Linear
    assert "skipped even" in caplog.text


def test_adapt_explicit_target_raises_for_unsupported_layer():
    with pytest.raises(UnsupportedLayerError, match=r"even: .*kernel_size=\(2, 2\)"):
        spa.adapt(_Net(), spa.SPLoRAConfig(target_modules=["even"]))


def test_adapt_regex_and_suffix_selection(tiny_mlp):
    spa.adapt(tiny_mlp, spa.SPLoRAConfig(target_modules=r"^0$"))
    assert tiny_mlp.spa_report.adapted == ["0"]
    other = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 2))
    spa.adapt(other, spa.SPLoRAConfig(rank=2, exclude_modules=["1"]))
    assert other.spa_report.adapted == ["0"]


def test_adapt_with_no_match_raises(tiny_mlp):
    with pytest.raises(NoTargetsError, match="no layer was adapted.*nothing"):
        spa.adapt(tiny_mlp, spa.SPLoRAConfig(target_modules="nothing"))


def test_adapt_twice_raises(tiny_mlp):
    spa.adapt(tiny_mlp, spa.SPLoRAConfig())
    with pytest.raises(ConfigError, match="already adapted"):
        spa.adapt(tiny_mlp, spa.SPLoRAConfig())


def test_adapt_unknown_head_raises(tiny_mlp):
    with pytest.raises(ConfigError, match="head_modules='classifier' matches no module"):
        spa.adapt(tiny_mlp, spa.SPLoRAConfig(head_modules="classifier"))


def test_adapt_gradients_reach_only_adapters_norms_and_head():
    model = _Net()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    spa.adapt(model, spa.SPLoRAConfig(rank=2))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"conv.down", "conv.up", "bn.weight", "bn.bias", "fc.weight", "fc.bias"}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == (name in trainable), name
    optimizer.step()
    state = model.state_dict()
    for key in ("conv.base.weight", "conv.base.bias", "even.weight", "up.weight"):
        assert torch.equal(state[key], base_state[key.replace("base.", "")])
    assert not torch.equal(state["fc.weight"], base_state["fc.weight"])


def test_adapt_fine_pruning_trains_base_weights(tiny_mlp):
    spa.adapt(tiny_mlp, spa.FinePruningConfig())
    assert all(p.requires_grad for p in tiny_mlp.parameters())
    assert tiny_mlp[0].rank == 0 and tiny_mlp[0].down is None


def test_adapt_shared_prototypes_use_one_bank():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2))
    spa.adapt(model, spa.SPLoPAConfig(block_shape=(4, 4), num_prototypes=2, shared_prototypes=True))
    assert model[0].prototypes is model[1].prototypes
    private = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2))
    spa.adapt(private, spa.SPLoPAConfig(block_shape=(4, 4), num_prototypes=2))
    assert private[0].prototypes is not private[1].prototypes


def test_adapt_rank_fraction_sets_rank_per_layer():
    model = nn.Sequential(nn.Linear(8, 20), nn.Linear(20, 10), nn.Linear(10, 2))
    spa.adapt(model, spa.SPLoRAConfig(rank_fraction=0.25))
    assert (model[0].rank, model[1].rank) == (5, 2)  # round(0.25 * out), within min(out, in)


def test_adapt_transformers_bert_and_vit():
    from transformers import BertConfig, BertForSequenceClassification, ViTConfig, ViTModel

    bert = BertForSequenceClassification(
        BertConfig(
            vocab_size=50,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=3,
        )
    )
    spa.adapt(bert, spa.SPLoRAConfig(rank=2))
    assert bert.spa_report.head == ["classifier"]
    assert "bert.encoder.layer.0.attention.self.query" in bert.spa_report.adapted
    assert bert(input_ids=torch.randint(0, 50, (2, 5))).logits.shape == (2, 3)
    vit = ViTModel(
        ViTConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=16,
            patch_size=4,
        )
    )
    spa.adapt(vit, spa.SPLoRAConfig(rank=2, head_modules=["pooler.dense"]))
    assert "layers.0.attention.q_proj" in vit.spa_report.adapted
    # the 4x4 patchify conv has no centre tap: skipped with the reason, not silently adapted
    assert "kernel_size=(4, 4)" in vit.spa_report.skipped["embeddings.patch_embeddings.projection"]
    assert vit(pixel_values=torch.randn(1, 3, 16, 16)).last_hidden_state.shape == (1, 17, 32)


def test_an_empty_head_selection_adapts_a_bare_encoders_last_projection_too():
    import transformers

    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64
    )
    encoder = transformers.BertModel(config, add_pooling_layer=False)
    last = "encoder.layer.0.output.dense"
    guessed = spa.adapt(copy.deepcopy(encoder), spa.SPLoRAConfig(rank=2))
    assert guessed.spa_report.head == [last]  # the last nn.Linear is taken as the head
    bare = spa.adapt(copy.deepcopy(encoder), spa.SPLoRAConfig(rank=2, head_modules=[]))
    assert bare.spa_report.head == []
    assert last in dict(spa.adapter_layers(bare))
