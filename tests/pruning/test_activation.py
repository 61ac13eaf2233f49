"""Activation-aware criteria (Wanda-sp, FLAP): block-by-block == whole model == the formula."""

from __future__ import annotations

import copy

import pytest
import torch

import spa
from spa.errors import ConfigError
from spa.pruning import channel_groups, compute_masks, score
from spa.pruning.calibration import sequential_blocks
from tests._transformers import VOCAB, Net, gpt2, llama, swin, tiny
from tests.conftest import ConvNet


def qwen2() -> Net:
    """Qwen2: Llama's layout with biased q/k/v projections, 2 key/value heads."""
    return tiny(
        "Qwen2ForCausalLM",
        "Qwen2Config",
        "decoder",
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=32,
    )


# (builder, attention output projection, FFN output projection, key/value heads, weight axis
# holding the output rows: 0 for nn.Linear, 1 for transformers' Conv1D)
CASES = {
    "llama": (llama, "self_attn.o_proj", "mlp.down_proj", 2, 0),
    "qwen2": (qwen2, "self_attn.o_proj", "mlp.down_proj", 2, 0),
    "gpt2": (gpt2, "attn.c_proj", "mlp.c_proj", 4, 1),
}
FORMULAS = {
    # per input channel: weight column term * activation term, X of shape (tokens, channels)
    "activation": lambda w, x: w.abs().sum(0) * x.square().mean(0).sqrt(),
    "fluctuation": lambda w, x: w.square().sum(0) * x.var(0, unbiased=False),
}


def _batches():
    return [torch.randint(1, VOCAB, (2, 6)) for _ in range(3)]


def _expected(plain: Net, case, criterion: str, data) -> list[torch.Tensor]:
    """Per group (heads then FFN, block by block), the explicit formula on captured inputs."""
    _, attention, ffn, kv_heads, axis = case
    inputs: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for name, module in plain.named_modules():
        if name.endswith((attention, ffn)):
            hook = lambda m, args, name=name: inputs.setdefault(name, []).append(args[0])  # noqa: E731
            hooks.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        for batch in data:
            plain(batch)
    for hook in hooks:
        hook.remove()
    result = []
    for name in sorted(inputs, key=lambda n: (int(n.split(".")[-3]), n.endswith(ffn))):
        weight = plain.get_submodule(name).weight.detach().double()
        weight = weight if axis == 0 else weight.t()  # (out, in)
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in inputs[name]]).double()
        values = FORMULAS[criterion](weight, x)
        values = values / values.norm()
        result.append(values.view(kv_heads, -1).mean(1) if name.endswith(attention) else values)
    return [r.float() for r in result]


@pytest.mark.parametrize("criterion", sorted(FORMULAS))
@pytest.mark.parametrize("family", sorted(CASES))
def test_activation_criteria_blockwise_equal_whole_model_and_formula(family, criterion):
    case = CASES[family]
    plain = case[0]().eval()
    model = spa.adapt(copy.deepcopy(plain), spa.FinePruningConfig())
    groups = channel_groups(model, None, units=("heads", "ffn"))
    data = _batches()
    assert sequential_blocks(model) is not None
    blockwise = score(model, criterion, groups, data, num_batches=None, blockwise=True)
    whole = score(model, criterion, groups, data, num_batches=None, blockwise=False)
    expected = _expected(plain, case, criterion, data)
    assert len(expected) == len(groups)
    for index in range(len(groups)):
        torch.testing.assert_close(blockwise[index], whole[index], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(blockwise[index], expected[index], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(blockwise[0], blockwise[0].mean().expand_as(blockwise[0]))


def test_activation_criterion_prunes_a_traced_conv_net_through_compute_masks():
    model = spa.adapt(ConvNet(), spa.FinePruningConfig())
    data = [torch.randn(2, 4, 6, 6) for _ in range(2)]
    groups = channel_groups(model, data[0])
    scores = score(model, "activation", groups, data, num_batches=None)
    assert all(scores[i].shape == (g.size,) for i, g in enumerate(groups))
    masks = compute_masks(groups, scores, density=0.6)
    assert any(not bool(mask.all()) for entry in masks.values() for mask in entry.values())


def test_activation_criterion_refuses_blockwise_on_a_model_without_blocks():
    model = spa.adapt(ConvNet(), spa.FinePruningConfig())
    data = [torch.randn(2, 4, 6, 6)]
    groups = channel_groups(model, data[0])
    with pytest.raises(ConfigError, match="blockwise=True"):
        score(model, "activation", groups, data, blockwise=True)


def test_activation_criterion_needs_data():
    model = spa.adapt(llama(), spa.FinePruningConfig())
    groups = channel_groups(model, None)
    with pytest.raises(ConfigError, match="calibration data"):
        score(model, "activation", groups)


def test_sequential_blocks_none_for_swin_stages():
    assert sequential_blocks(swin().model) is None


@pytest.mark.parametrize("power", [1, 2])
def test_column_norms_in_row_chunks_equal_the_formula(power):
    from spa.pruning.activation import column_norms

    linear = torch.nn.Linear(6, 10)
    expected = linear.weight.detach().double().abs().pow(power).sum(0)
    torch.testing.assert_close(column_norms(linear, power, rows=3), expected)
    conv = torch.nn.Conv2d(4, 6, 3, groups=2)  # input channel j belongs to group j // 2
    w = conv.weight.detach().double().abs().pow(power)  # (6, 2, 3, 3)
    grouped = torch.cat([w[:3].sum(dim=(0, 2, 3)), w[3:].sum(dim=(0, 2, 3))])
    torch.testing.assert_close(column_norms(conv, power, rows=2), grouped)
