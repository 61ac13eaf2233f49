"""The row-layout resolver against each architecture's own reshape of its fused projection.

Each expected layout below is the expression the `transformers` 5.23 modelling code uses to
split the fused output (written out here, independently of `spa.families.rows`): the output
`arange(rows)` run through it gives, per head, which rows the model reads.
"""

from __future__ import annotations

import pytest
import torch

from spa.errors import ConfigError
from spa.families import BlockLayout, ffn_neurons, head_rows, neuron_rows

D = 3  # head_dim, unrelated to any hidden size


def _layout(qkv_layout: str = "blocked", groups: int = 1, chunks: int = 1) -> BlockLayout:
    return BlockLayout(
        path="block",
        attention="block.attn",
        head_dim=D,
        query=None,
        key=None,
        value=None,
        qkv="block.qkv",
        output="block.o",
        ffn="block.mlp",
        ffn_inputs=("block.up",),
        ffn_output="block.down",
        qkv_layout=qkv_layout,
        kv_groups=groups,
        ffn_chunks=chunks,
    )


def _phi3(heads: int, kv: int):  # Phi3Attention.forward: slices at heads*d and kv*d
    qkv = torch.arange((heads + 2 * kv) * D)
    q, k, v = qkv[: heads * D], qkv[heads * D : (heads + kv) * D], qkv[(heads + kv) * D :]
    return q.view(heads, D), k.view(kv, D), v.view(kv, D)


def _neox(heads: int, kv: int):  # GPTNeoXAttention: view(-1, 3 * head_size).chunk(3)
    q, k, v = torch.arange(3 * heads * D).view(heads, 3 * D).chunk(3, dim=-1)
    return q, k, v


def _bloom(heads: int, kv: int):  # BloomAttention._reshape: view(heads, 3, head_dim)
    fused = torch.arange(3 * heads * D).view(heads, 3, D)
    return fused[:, 0], fused[:, 1], fused[:, 2]


def _falcon(heads: int, kv: int):  # new_decoder_architecture: view(-1, heads // kv + 2, d)
    fused = torch.arange((heads + 2 * kv) * D).view(kv, heads // kv + 2, D)
    return fused[:, :-2].reshape(heads, D), fused[:, -2], fused[:, -1]


def _modernbert(heads: int, kv: int):  # ModernBertAttention: view(3, -1, head_dim)
    fused = torch.arange(3 * heads * D).view(3, heads, D)
    return fused[0], fused[1], fused[2]


CASES = {
    "phi3-gqa": (_phi3, "blocked", 6, 2),
    "gpt2-mha": (_phi3, "blocked", 4, 4),
    "neox": (_neox, "grouped", 4, 4),
    "bloom": (_bloom, "grouped", 4, 4),
    "falcon-gqa": (_falcon, "grouped", 6, 2),
    "falcon-multi-query": (_falcon, "grouped", 4, 1),
    "modernbert": (_modernbert, "blocked", 4, 4),
}


@pytest.mark.parametrize("name", list(CASES))
def test_head_rows_pick_the_rows_the_model_reads_as_each_head(name):
    split, qkv_layout, heads, kv = CASES[name]
    query, key, value = split(heads, kv)
    total = (heads + 2 * kv) * D
    resolved = head_rows(_layout(qkv_layout, heads // kv), lambda path: total)
    assert (resolved.heads, resolved.kv_heads, resolved.groups) == (heads, kv, heads // kv)
    for h in range(heads):
        assert list(resolved.query_rows(h)) == query[h].tolist()
        assert list(resolved.output_columns(h)) == list(range(h * D, (h + 1) * D))
    for j in range(kv):
        assert list(resolved.key_rows(j)) == key[j].tolist()
        assert list(resolved.value_rows(j)) == value[j].tolist()


def test_head_rows_of_separate_projections_use_head_dim_not_hidden_over_heads():
    layout = BlockLayout(
        path="b",
        attention="b.a",
        head_dim=16,  # Gemma: 4 heads of 16 over a hidden size of 32
        query="b.q",
        key="b.k",
        value="b.v",
        qkv=None,
        output="b.o",
        ffn="b.m",
        ffn_inputs=("b.up",),
        ffn_output="b.down",
    )
    rows = {"b.q": 64, "b.k": 32, "b.v": 32}
    resolved = head_rows(layout, rows.__getitem__)
    assert (resolved.heads, resolved.kv_heads, resolved.width) == (4, 2, 64)
    assert list(resolved.query_rows(3)) == list(range(48, 64))
    assert list(resolved.key_rows(1)) == list(range(16, 32))
    with pytest.raises(ConfigError, match="not whole heads of 16"):
        head_rows(layout, {"b.q": 64, "b.k": 24, "b.v": 24}.__getitem__)


def test_fused_rows_that_are_not_whole_groups_are_refused_naming_the_projection():
    with pytest.raises(ConfigError, match=r"block\.qkv: 20 rows are not whole groups of 2"):
        head_rows(_layout("blocked", 2), lambda path: 20)


def test_neuron_rows_of_a_fused_gate_up_are_the_rows_each_chunk_reads():
    layout = _layout(chunks=2)
    gate, up = torch.arange(10).chunk(2, dim=-1)  # Phi3MLP / GlmMLP: gate, up = x.chunk(2)
    neurons = ffn_neurons(layout, lambda path: 10)
    assert neurons == 5
    rows, owners = neuron_rows(layout, neurons)
    assert rows == list(range(10))
    for i in range(neurons):
        assert [r for r, owner in zip(rows, owners) if owner == i] == [int(gate[i]), int(up[i])]
    with pytest.raises(ConfigError, match="11 rows are not 2 equal parts"):
        ffn_neurons(layout, lambda path: 11)
