"""Taylor block by block (`spa.pruning.backward.blockwise_taylor`) == one whole-model backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import spa
from spa.adapters.protocols import adapter_layers
from spa.errors import ConfigError
from spa.pruning import CRITERIA, channel_groups, score
from spa.pruning.calibration import sequential_blocks
from tests._transformers import VOCAB, gpt2, llama
from tests.conftest import ConvNet

UNITS = ("heads", "ffn", "hidden")


def _task(build) -> nn.Module:
    """The causal LM of `build`, SPLoRA rank 2 with non-zero factors, in eval mode."""
    torch.manual_seed(0)
    model = spa.adapt(build().model, spa.SPLoRAConfig(rank=2)).eval()
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            nn.init.normal_(layer.up, std=0.1)
    return model


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    ids = [torch.randint(1, VOCAB, (2, 7)) for _ in range(2)]
    return [(x[:, :-1], x[:, 1:]) for x in ids]  # next-token targets


def _every_layer(model: nn.Module) -> dict[str, nn.Module]:
    """Every Linear-like layer and the embeddings: before, inside and after the blocks."""
    return {
        name: module
        for name, module in model.named_modules()
        if name.endswith(("embed_tokens", "wte", "wpe", "lm_head"))
        or any(name == n for n, _ in adapter_layers(model))
    }


@pytest.mark.parametrize("build", [llama, gpt2], ids=["llama", "gpt2"])
def test_blockwise_taylor_statistics_equal_whole_model(build):
    """Per layer (embeddings, every block projection, the LM head) to 1e-5 of its largest value."""
    model = _task(build)
    layers = _every_layer(model)
    assert sequential_blocks(model) is not None
    assert any(name.endswith("lm_head") for name in layers)
    taylor = CRITERIA.get("taylor")
    data = _data()
    blockwise = taylor(model, layers, data=data, num_batches=None, blockwise=True)
    whole = taylor(model, layers, data=data, num_batches=None, blockwise=False)
    assert set(blockwise) == set(whole) == set(layers)
    for name in layers:
        scale = whole[name].abs().max()
        assert scale > 0, name
        torch.testing.assert_close(blockwise[name] / scale, whole[name] / scale, rtol=0, atol=1e-5)


@pytest.mark.parametrize("build", [llama, gpt2], ids=["llama", "gpt2"])
def test_blockwise_taylor_scores_equal_whole_model_for_heads_ffn_hidden(build):
    model = _task(build)
    groups = channel_groups(model, None, units=UNITS)
    data = _data()
    blockwise = score(model, "taylor", groups, data, num_batches=None, blockwise=True)
    whole = score(model, "taylor", groups, data, num_batches=None, blockwise=False)
    for index in range(len(groups)):
        torch.testing.assert_close(blockwise[index], whole[index], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(blockwise[0], blockwise[0].mean().expand_as(blockwise[0]))


def test_blockwise_taylor_holds_one_block_graph_and_restores_the_model():
    """During a block's backward no other block has run with gradients since the last one was
    freed: each block's forward with gradients happens exactly once, after its successor's."""
    model = _task(llama)
    order = []
    blocks = [model.get_submodule(path) for path in sequential_blocks(model)]
    hooks = [
        block.register_forward_hook(
            lambda m, a, o, i=i: order.append(i) if torch.is_grad_enabled() else None
        )
        for i, block in enumerate(blocks)
    ]
    layers = _every_layer(model)
    try:
        CRITERIA.get("taylor")(model, layers, data=_data()[:1], blockwise=True)
    finally:
        for hook in hooks:
            hook.remove()
    assert order[-len(blocks) :] == list(reversed(range(len(blocks))))
    assert all("forward" not in vars(block) for block in blocks)  # the stand-ins are gone
    assert all(parameter.grad is None for parameter in model.parameters())


def test_blockwise_taylor_refuses_a_model_without_blocks():
    model = spa.adapt(ConvNet(), spa.SPLoRAConfig(rank=2))
    groups = channel_groups(model, torch.randn(2, 4, 6, 6))
    data = [(torch.randn(2, 4, 6, 6), torch.tensor([0, 1]))]
    with pytest.raises(ConfigError, match="blockwise=True"):
        score(model, "taylor", groups, data, blockwise=True)
