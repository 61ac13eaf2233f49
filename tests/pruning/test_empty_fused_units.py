"""Empty heads and neurons in fused projections (Phi-3's `[q | k | v]` with grouped-query
attention and `[gate | up]`, GPT-NeoX's per-head interleaving) are found and removed exactly.

The zeroed rows are written out by hand from each model's own layout (Phi-3 slices `qkv` at
`heads * d` and `(heads + kv) * d`; GPT-NeoX views it as `(heads, 3 * d)`), not by the resolver.
"""

from __future__ import annotations

import torch

from spa.pruning.empty_units import remove_empty_units
from tests.architectures._open_world import registry_cases

D, HEADS, KV, NEURONS = 8, 4, 2, 64


def _build(name: str):
    torch.manual_seed(0)
    return next(case for case in registry_cases() if case.name == name).build()


def _outputs(net, ids):
    with torch.no_grad():
        return net(ids)


def test_phi3_empty_value_head_and_gate_row_are_removed_with_outputs_unchanged():
    net = _build("phi3")
    block = net.model.model.layers[0]
    value_of_kv_head_1 = range((HEADS + KV) * D + D, (HEADS + KV) * D + 2 * D)
    with torch.no_grad():
        block.self_attn.qkv_proj.weight[list(value_of_kv_head_1)] = 0
        block.mlp.gate_up_proj.weight[5] = 0  # neuron 5's gate row: silu(0) * up = 0
    ids = torch.randint(3, 40, (2, 6))
    before, parameters = _outputs(net, ids), sum(p.numel() for p in net.parameters())
    report = remove_empty_units(net)
    assert report.removed_heads == {"model.model.layers.0.self_attn": [2, 3]}
    assert report.removed_neurons == {"model.model.layers.0.mlp": 1}
    # Two query heads, one key and one value head of d rows each; one neuron's two rows + column.
    removed = (2 * D + 2 * D) * 32 + 2 * D * 32 + 3 * 32
    assert parameters - sum(p.numel() for p in net.parameters()) == removed
    assert block.self_attn.qkv_proj.out_features == (2 + 2) * D
    assert block.mlp.gate_up_proj.out_features == 2 * (NEURONS - 1)
    torch.testing.assert_close(_outputs(net, ids), before, rtol=0, atol=1e-5)


def test_gpt_neox_empty_interleaved_value_head_is_removed_with_outputs_unchanged():
    net = _build("gpt_neox")
    attention = net.model.gpt_neox.layers[1].attention
    value_of_head_2 = range(2 * 3 * D + 2 * D, 3 * 3 * D)  # (heads, 3d) rows: [q | k | v] of head 2
    with torch.no_grad():
        attention.query_key_value.weight[list(value_of_head_2)] = 0
        attention.query_key_value.bias[list(value_of_head_2)] = 0.3  # folded into dense's bias
    ids = torch.randint(3, 40, (2, 6))
    before = _outputs(net, ids)
    report = remove_empty_units(net)
    assert report.removed_heads == {"model.gpt_neox.layers.1.attention": [2]}
    assert attention.query_key_value.out_features == 3 * 3 * D
    assert attention.dense.in_features == 3 * D
    torch.testing.assert_close(_outputs(net, ids), before, rtol=0, atol=1e-5)
