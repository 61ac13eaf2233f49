"""Norms described beside the projections: joint q/k norms over all heads (OLMo2), per-key/value
head norm weights (Cohere), norms without a weight (OLMo), and the descriptions' validation."""

from __future__ import annotations

import pytest
import torch

from spa.errors import ConfigError
from spa.families import AttentionDescription
from spa.pruning import channel_groups
from tests._transformers import adapted_after_step
from tests.architectures._open_world import Architecture, cases


def _case(name: str) -> Architecture:
    return next(case for case in cases() if case.name == name)


def test_joint_norms_need_query_or_key_of_separate_projections():
    with pytest.raises(ConfigError, match="joint_norms.*'value'"):
        AttentionDescription(
            module="a", head_dim="d", query="q", key="k", value="v", output="o",
            joint_norms={"q_norm": "value"},
        )  # fmt: skip
    with pytest.raises(ConfigError, match="joint_norms"):
        AttentionDescription(
            module="a", head_dim="d", qkv="qkv", output="o", joint_norms={"q_norm": "query"}
        )


def _heads_group(name: str):
    torch.manual_seed(0)
    case = _case(name)
    _, model, x, _ = adapted_after_step(case.build(), case.inputs)
    return model, channel_groups(model, x, units=("heads",))[0]


def test_joint_norm_channels_go_with_their_heads_query_and_key_rows():
    model, group = _heads_group("olmo2")
    members = {(m.name.rpartition(".")[2], m.role): m for m in group.members}
    for norm, projection in (("q_norm", "q_proj"), ("k_norm", "k_proj")):
        joint, rows = members[(norm, "norm")], members[(projection, "out")]
        # The norm has one channel per projection row: the same positions, the same heads.
        assert (joint.positions, joint.channels) == (rows.positions, rows.channels)
        attention = model.get_submodule(joint.name.rpartition(".")[0])
        assert joint.mask_size == getattr(attention, norm).weight.numel()


def test_per_kv_head_norm_rows_go_with_their_key_value_head():
    _, group = _heads_group("cohere-qk-norm")
    params = {m.name.rpartition(".")[0].rpartition(".")[2]: m for m in group.members}
    # 4 query heads read 2 key/value heads: q_norm rows 0..3 -> channels 0,0,1,1; k_norm 0..1.
    assert params["q_norm"].channels == (0, 0, 1, 1)
    assert params["k_norm"].positions == params["k_norm"].channels == (0, 1)


def test_weightless_norms_are_hidden_size_members_sized_by_normalized_shape():
    torch.manual_seed(0)
    case = _case("olmo")
    _, model, x, _ = adapted_after_step(case.build(), case.inputs)
    (group,) = channel_groups(model, x, units=("hidden",))
    norms = [m for m in group.members if m.role == "norm"]
    assert norms and all(m.mask_size == 32 for m in norms)
    assert all(not any(model.get_submodule(m.name).parameters()) for m in norms)
