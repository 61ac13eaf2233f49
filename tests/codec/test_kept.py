"""`spa.codec.kept`: the base positions compaction kept in narrowed module tensors."""

from __future__ import annotations

import torch
from torch import nn

from spa.codec.records import recorded, same_as_kept
from spa.pruning import compact
from spa.pruning.module_masks import set_module_mask


def _head_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(10, 6), nn.Linear(6, 4))


def test_compaction_records_the_kept_base_columns_and_composes_over_two_compactions():
    model = _head_model()
    embedding, head = model[0].weight.detach().clone(), model[1].weight.detach().clone()
    first = torch.tensor([True, False, True, True, False, True])
    set_module_mask(model[0], "out", first)
    set_module_mask(model[1], "in", first)
    compact(model)
    axis, kept = recorded(model[0], "weight")
    assert axis == 1 and kept.tolist() == [0, 2, 3, 5]
    assert recorded(model[1], "weight")[1].tolist() == [0, 2, 3, 5]
    assert recorded(model[1], "bias") is None  # an input-side mask leaves the bias whole
    second = torch.tensor([False, True, True, True])  # of the 4 kept: drop base column 0
    set_module_mask(model[0], "out", second)
    set_module_mask(model[1], "in", second)
    compact(model)
    axis, kept = recorded(model[0], "weight")
    assert axis == 1 and kept.tolist() == [2, 3, 5]
    torch.testing.assert_close(model[0].weight, embedding[:, [2, 3, 5]], rtol=0, atol=0)
    torch.testing.assert_close(model[1].weight, head[:, [2, 3, 5]], rtol=0, atol=0)
    assert same_as_kept(model[1].weight, head, 1, kept, chunk=2)


def test_a_tensor_narrowed_on_two_axes_has_no_record():
    model = _head_model()
    set_module_mask(model[1], "in", torch.tensor([True, False, True, True, True, True]))
    set_module_mask(model[1], "out", torch.tensor([True, True, False, True]))
    compact(model)
    assert model[1].weight.shape == (3, 5)
    assert recorded(model[1], "weight") is None
    assert recorded(model[1], "bias")[1].tolist() == [0, 1, 3]


def test_same_as_kept_sees_a_changed_value():
    base = torch.randn(4, 6)
    kept = torch.tensor([1, 4])
    narrowed = base[:, kept].clone()
    assert same_as_kept(narrowed, base, 1, kept)
    narrowed[2, 1] += 1
    assert not same_as_kept(narrowed, base, 1, kept)
    assert not same_as_kept(base[:, :3], base, 1, kept)
