"""The traced path (no family matches) never cuts inside an attention head (issue 21, item 4)."""

from __future__ import annotations

import copy
import logging
import time

import pytest
import torch

import spa
from spa.errors import SpaWarning, UnsupportedLayerError
from spa.pruning import apply_masks, channel_groups, compact, compute_masks, score
from tests._traced_models import build, traced_path


@pytest.fixture(autouse=True)
def _traced(monkeypatch):
    traced_path(monkeypatch)


def _adapted(name: str):
    model, x = build(name)
    spa.adapt(model, spa.SPLoRAConfig(rank=2))
    with torch.no_grad():
        for _, layer in spa.adapter_layers(model):
            layer.up.normal_()  # adapters that matter, so scores differ between heads
    return model, x


def _attention_members(groups, fragment):
    for group in groups:
        for member in group.members:
            if fragment in member.name and member.role in ("out", "in"):
                yield group, member


@pytest.mark.parametrize(("name", "head_dim"), [("whisper_encoder", 8), ("opt", 8)])
def test_traced_attention_group_channels_are_whole_heads(name, head_dim):
    model, x = _adapted(name)
    groups = channel_groups(model, x)
    found = 0
    for _, member in _attention_members(groups, "self_attn."):
        rows: dict[int, set[int]] = {}
        for position, channel in zip(member.positions, member.channels):
            rows.setdefault(channel, set()).add(position)
        for positions in rows.values():  # a channel holds whole heads, nothing less
            heads = {p // head_dim for p in positions}
            assert positions == {h * head_dim + r for h in heads for r in range(head_dim)}
        found += 1
    assert found >= 8  # q, k, v rows and output columns of both blocks


def test_opt_heads_pruned_on_the_traced_path_compact_to_fewer_heads():
    model, x = _adapted("opt")  # no use_cache=False anywhere: tracing turns the cache off
    groups = channel_groups(model, x)
    scores = score(model, "weight", groups)
    apply_masks(model, compute_masks(groups, scores, 0.3))
    with torch.no_grad():
        masked = model(x)
    compacted = compact(copy.deepcopy(model), x)
    attention = compacted.model.model.decoder.layers[0].self_attn
    rows = attention.q_proj.base.out_features
    assert rows % attention.head_dim == 0 and attention.num_heads == rows // attention.head_dim
    heads = [layer.self_attn.num_heads for layer in compacted.model.model.decoder.layers]
    assert min(heads) < 4  # some head went
    with torch.no_grad():
        torch.testing.assert_close(compacted(x), masked, rtol=1e-4, atol=1e-5)


def test_fused_qkv_projection_is_left_out_with_a_warning_naming_it():
    model, x = _adapted("bloom")
    with pytest.warns(SpaWarning, match=r"h\.0\.self_attention\.query_key_value .*heads x"):
        groups = channel_groups(model, x)
    assert not any("query_key_value" in m.name for g in groups for m in g.members)


@pytest.mark.parametrize("name", ["gemma", "qwen3"])
def test_tracing_that_does_not_settle_is_refused_in_one_line_within_the_time_limit(name):
    model, x = _adapted(name)
    started = time.perf_counter()
    with pytest.raises(UnsupportedLayerError, match=rf"'{name}' model.*1 s.*spa\.families\.Family"):
        channel_groups(model, x, time_limit=1.0)
    assert time.perf_counter() - started < 10
    assert all(bool(layer.out_mask.all()) for _, layer in spa.adapter_layers(model))


def test_tracing_says_what_it_is_doing(caplog):
    model, x = _adapted("whisper_encoder")
    with caplog.at_level(logging.INFO, logger="spa.pruning.groups"):
        channel_groups(model, x)
    messages = [record.getMessage() for record in caplog.records]
    assert any("tracing this 'whisper' model" in m for m in messages)
    assert any(m.startswith("traced ") and "channel groups" in m for m in messages)
