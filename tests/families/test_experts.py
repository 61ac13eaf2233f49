"""Mixture-of-experts FFNs split into per-expert linear layers (issue 21 item 3), checked against
transformers' own experts module, Eq. 4 written out per expert, and FLOPs counted by hand."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import transformers

import spa
from spa.adapters.inject import adapt_report
from spa.families import FAMILIES, SplitExperts, describe, explain, split_experts
from spa.pruning import apply_masks, channel_groups, compact, compute_masks
from spa.pruning.empty_units import remove_empty_units
from tests._transformers import Net

HIDDEN, NEURONS, EXPERTS, TOP_K, TOKENS = 32, 16, 4, 2, 12


def _model(family: str = "mixtral", split: bool = True) -> Net:
    example = FAMILIES.get(family).examples[0]
    torch.manual_seed(0)
    config = getattr(transformers, example.config)(**example.options)
    model = Net(getattr(transformers, example.model)(config), "decoder").eval()
    if split:
        split_experts(model)
    return model


def _routing(seed: int = 1):
    """Tokens, each routed to TOP_K distinct experts with positive weights."""
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(TOKENS, HIDDEN, generator=generator)
    index = torch.stack([torch.randperm(EXPERTS, generator=generator)[:TOP_K] for _ in hidden])
    weights = torch.rand(TOKENS, TOP_K, generator=generator).softmax(-1)
    return hidden, index, weights


def _experts(model: Net, block: int = 0):
    return model.model.model.layers[block].mlp.experts


@pytest.mark.parametrize("family", ["mixtral", "qwen2-moe"])
def test_split_experts_compute_what_transformers_experts_do_and_share_their_weights(family):
    model = _model(family, split=False)
    original = copy.deepcopy(_experts(model))
    replaced = split_experts(model)
    experts = _experts(model)
    assert isinstance(experts, SplitExperts)
    assert replaced == [f"model.model.layers.{b}.mlp.experts" for b in range(2)]
    hidden, index, weights = _routing()
    with torch.no_grad():
        expected = original(hidden, index, weights)
        torch.testing.assert_close(experts(hidden, index, weights), expected, rtol=0, atol=1e-6)
    unsplit = _model(family, split=False)
    gate_up = _experts(unsplit).gate_up_proj
    split_experts(unsplit)
    for e in range(EXPERTS):  # views into the 3-D parameter, no copy
        weight = _experts(unsplit).gate_up[e].weight
        assert weight.untyped_storage().data_ptr() == gate_up.untyped_storage().data_ptr()
        assert torch.equal(weight, gate_up[e])


def test_unsplit_experts_fit_no_family_and_explain_names_the_per_expert_layer():
    model = _model(split=False)
    assert describe(model) is None
    assert "mlp.experts.gate_up.0" in explain(model) and "split_experts" in explain(model)


def _eq4(layer, x: torch.Tensor) -> torch.Tensor:
    """Eq. 4 written out: x (W_s * m_row m_col^T + (W_down * m_row)(W_up * m_col))^T."""
    rows, cols = layer.out_mask.float(), layer.in_mask.float()
    weight = layer.base.weight * rows[:, None] * cols[None, :]
    weight = weight + (layer.down * rows[:, None]) @ (layer.up * cols[None, :])
    return x @ weight.T


def test_adapted_experts_are_eq4_per_expert_with_the_models_routing():
    model = _model()
    spa.adapt(model, spa.SPLoRAConfig(rank=2))
    experts = _experts(model)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for layer in [*experts.gate_up, *experts.down]:
            layer.up.normal_(generator=generator)  # a non-trivial adapter
            layer.out_mask.copy_(torch.rand(len(layer.out_mask), generator=generator) > 0.3)
            layer.in_mask.copy_(torch.rand(len(layer.in_mask), generator=generator) > 0.3)
    hidden, index, weights = _routing()
    expected = torch.zeros_like(hidden)
    with torch.no_grad():
        for t in range(TOKENS):
            for slot in range(TOP_K):
                e = int(index[t, slot])
                gate, up = _eq4(experts.gate_up[e], hidden[t : t + 1]).chunk(2, dim=-1)
                out = _eq4(experts.down[e], F.silu(gate) * up)
                expected[t] += weights[t, slot] * out[0]
        torch.testing.assert_close(experts(hidden, index, weights), expected, rtol=1e-5, atol=1e-5)


def _pruned(family: str):
    """An adapted model pruned by global ranking (experts keep different widths), its input."""
    model = _model(family)
    spa.adapt(model, spa.SPLoRAConfig(rank=2))
    x = torch.randint(3, 40, (2, 6))
    groups = channel_groups(model, x, units=("ffn",))
    generator = torch.Generator().manual_seed(3)
    scores = {i: torch.rand(group.size, generator=generator) for i, group in enumerate(groups)}
    apply_masks(model, compute_masks(groups, scores, 0.4, ranking="global"))
    return model, x


@pytest.mark.parametrize("family", ["mixtral", "qwen2-moe"])
def test_experts_keep_their_own_widths_and_compacted_equals_masked(family):
    model, x = _pruned(family)
    with torch.no_grad():
        masked = model(x)
        compacted = compact(copy.deepcopy(model), x)
        torch.testing.assert_close(compacted(x), masked, rtol=1e-4, atol=1e-5)
    experts = _experts(compacted)
    widths = [layer.base.weight.shape[0] // 2 for layer in experts.gate_up]
    kept = [int(layer.out_mask.sum()) // 2 for layer in _experts(model).gate_up]
    assert widths == kept and len(set(widths)) > 1  # per expert, no padding
    assert [layer.base.weight.shape[1] for layer in experts.down] == widths


def test_flops_count_each_token_s_routed_experts_only():
    model, _ = _pruned("mixtral")
    experts = _experts(spa.fuse(compact(model)))
    hidden, index, weights = _routing()
    widths = [layer.weight.shape[0] // 2 for layer in experts.gate_up]
    # Per token and routed expert e: [gate | up] (2 I_e x H) and down (H x I_e) products.
    expected = sum(2 * (2 * widths[e] * HIDDEN + HIDDEN * widths[e]) for e in index.flatten())
    assert spa.count_flops(experts, (hidden, index, weights)) == expected
    dense = 2 * TOKENS * EXPERTS * 3 * HIDDEN * NEURONS
    assert expected < dense * TOP_K / EXPERTS  # fewer than the routed unpruned experts


@pytest.mark.slow
def test_adapt_splits_experts_and_bundles_load_onto_the_unsplit_base(tmp_path):
    model = _model(split=False)
    base = copy.deepcopy(model)
    state = {key: value.clone() for key, value in base.state_dict().items()}
    spa.adapt(model, spa.SPLoRAConfig(rank=2))
    assert adapt_report(model).split_experts == [
        f"model.model.layers.{b}.mlp.experts" for b in range(2)
    ]
    assert isinstance(_experts(model), SplitExperts)
    x = torch.randint(3, 40, (2, 6))
    groups = channel_groups(model, x, units=("heads", "ffn"))
    scores = {i: torch.rand(group.size) for i, group in enumerate(groups)}
    apply_masks(model, compute_masks(groups, scores, 0.4))
    path = tmp_path / "task.safetensors"
    spa.save_task(spa.compacted(model), path, base_model=base)
    with torch.no_grad():
        masked = model(x)
        torch.testing.assert_close(spa.load_task(base, path)(x), masked, rtol=1e-4, atol=1e-5)
        host = spa.TaskHost(base)
        host.add_task("task", path)
        torch.testing.assert_close(host.model("task")(x), masked, rtol=1e-4, atol=1e-5)
    assert not isinstance(_experts(base), SplitExperts)  # the base is read, never changed
    assert state.keys() == base.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in base.state_dict().items())
    split = copy.deepcopy(base)
    split_experts(split)
    with torch.no_grad():  # a split base takes the same bundle
        torch.testing.assert_close(spa.load_task(split, path)(x), masked, rtol=1e-4, atol=1e-5)


def test_block_pruning_removes_each_expert_s_emptied_neurons():
    model = _model()
    spa.adapt(model, spa.SPLoPAConfig(block_shape=(8, 8), num_prototypes=2))
    experts = _experts(model)
    with torch.no_grad():
        for layer in [*experts.gate_up, *experts.down]:
            layer.block_weights.normal_()
        experts.gate_up[1].block_mask[0] = False  # expert 1: gate rows of neurons 0-7
        experts.down[2].block_mask[:, 1] = False  # expert 2: down columns of neurons 8-15
    hidden, index, weights = _routing()
    x = torch.randint(3, 40, (2, 6))
    with torch.no_grad():
        expected, expected_experts = model(x), experts(hidden, index, weights)
    fused = spa.fuse(model)
    report = remove_empty_units(fused)
    experts = _experts(fused)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(experts(hidden, index, weights), expected_experts)
    assert [layer.weight.shape[0] // 2 for layer in experts.gate_up] == [16, 8, 8, 16]
    assert [layer.weight.shape[1] for layer in experts.down] == [16, 8, 8, 16]
    assert report.removed_neurons["model.model.layers.0.mlp.experts"] == 16
