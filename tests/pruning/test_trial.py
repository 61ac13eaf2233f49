"""Traced groups whose pruning would not compact into the masked model are left out before any
mask is applied (issue 21: refused up front, naming the module and the reason)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import spa
from spa.errors import SpaWarning
from spa.pruning import channel_groups


class HiddenReshape(nn.Module):
    """Reshapes a conv's output with a channel count of its own (as SegFormer's sequence
    reduction reshapes with its input's): a coupling the traced graph does not show."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.reduce = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 3)
        self.channels = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.reduce(self.stem(x)).reshape(x.shape[0], self.channels, -1)
        return self.head(y.mean(-1))


def test_group_that_breaks_compaction_is_left_out_with_a_warning_before_masking():
    model = spa.adapt(HiddenReshape().eval(), spa.SPLoRAConfig(rank=2))
    x = torch.randn(2, 3, 4, 4)
    with pytest.warns(SpaWarning, match=r"rooted at reduce is not pruned: removing its channels"):
        groups = channel_groups(model, x)
    assert not any(g.root == "reduce" for g in groups)
    assert all(bool(layer.out_mask.all()) for _, layer in spa.adapter_layers(model))


class Fold(nn.Module):
    """Reshapes with a fixed channel count (no parameters of its own)."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y.reshape(y.shape[0], 8, -1, y.shape[-1]).flatten(2)


class NestedReshape(HiddenReshape):
    """`HiddenReshape` with the reshape inside a submodule, which must be named."""

    def __init__(self) -> None:
        super().__init__()
        self.fold = nn.Sequential(nn.Identity(), Fold())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fold(self.reduce(self.stem(x))).mean(-1))


def test_left_out_group_names_the_innermost_module_where_the_compacted_model_fails():
    model = spa.adapt(NestedReshape().eval(), spa.SPLoRAConfig(rank=2))
    with pytest.warns(SpaWarning, match=r"rooted at reduce .*\(RuntimeError in fold\.1: shape"):
        channel_groups(model, torch.randn(2, 3, 4, 4))


def test_segformer_groups_that_pass_compact_into_the_masked_model():
    from tests._traced_models import build

    model, x = build("segformer")
    spa.adapt(model, spa.SPLoRAConfig(rank=2))
    with pytest.warns(SpaWarning, match="does not compact into the masked model"):
        groups = channel_groups(model, x)
    assert groups  # the FFN and head groups stay
    assert not any("mlp.fc2" == g.root.rpartition("blocks.0.")[2] for g in groups)
