"""all_reduce_statistics / all_reduce_gradients / mask_fingerprint / assert_same_across_ranks.

Cross-rank behaviour is in test_multiprocess.py; here: the single-process identity, the real
collective path on a one-rank gloo group, and what the fingerprint covers.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

import spa
from spa.distributed import (
    all_reduce_gradients,
    all_reduce_statistics,
    assert_same_across_ranks,
    broadcast_from_main,
    mask_fingerprint,
    synchronise_buffers,
)
from spa.errors import ConfigError
from spa.pruning.module_masks import set_module_mask, set_parameter_mask


def _model() -> nn.Module:
    torch.manual_seed(0)
    return spa.adapt(
        nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.LayerNorm(8), nn.Linear(8, 3)),
        spa.SPLoRAConfig(rank=2),
    )


def _statistics() -> dict:
    return {"layer2": torch.tensor([3.0, 1.0]), "layer1": torch.arange(6.0).reshape(2, 3)}


def test_all_reduce_statistics_single_process_is_identity():
    statistics = _statistics()
    reduced = all_reduce_statistics(statistics)
    assert list(reduced) == ["layer2", "layer1"]
    for key, value in statistics.items():
        assert reduced[key] is value


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_all_reduce_statistics_world_of_one_keeps_values_dtype_and_order(world_of_one, reduction):
    statistics = {**_statistics(), 7: torch.tensor([1, 2], dtype=torch.float16)}
    reduced = all_reduce_statistics(statistics, reduction=reduction)
    assert list(reduced) == ["layer2", "layer1", 7]  # input order, whatever the wire order
    for key, value in statistics.items():
        assert reduced[key] is not value
        assert reduced[key].dtype == value.dtype and reduced[key].shape == value.shape
        torch.testing.assert_close(reduced[key], value, rtol=0, atol=0)


def test_all_reduce_statistics_world_of_one_empty(world_of_one):
    assert all_reduce_statistics({}) == {}


def test_all_reduce_statistics_rejects_unknown_reduction():
    with pytest.raises(ConfigError, match="reduction must be 'mean' or 'sum', got 'max'"):
        all_reduce_statistics(_statistics(), reduction="max")


def test_all_reduce_statistics_usable_as_score_reduce_fn(world_of_one):
    model = _model()
    x = torch.randn(4, 6)
    groups = spa.pruning.channel_groups(model, x)
    data = [(x, torch.tensor([0, 1, 2, 0]))]
    plain = spa.pruning.score(model, "taylor", groups, data)
    reduced = spa.pruning.score(model, "taylor", groups, data, reduce_fn=all_reduce_statistics)
    for index, value in plain.items():
        torch.testing.assert_close(reduced[index], value)


def test_all_reduce_gradients_world_of_one_fills_missing_with_zeros(world_of_one):
    with_grad = torch.ones(2, 2, requires_grad=True)
    with_grad.grad = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    without_grad = torch.ones(3, requires_grad=True)
    all_reduce_gradients([with_grad, without_grad])
    torch.testing.assert_close(with_grad.grad, torch.tensor([[1.0, -2.0], [0.5, 4.0]]))
    torch.testing.assert_close(without_grad.grad, torch.zeros(3))


def test_all_reduce_gradients_single_process_is_noop():
    tensor = torch.ones(2, requires_grad=True)
    all_reduce_gradients([tensor])
    assert tensor.grad is None


def test_mask_fingerprint_is_sha256_of_named_masks_in_module_order():
    model = _model()
    assert [n for n, _ in spa.adapter_layers(model)] == ["0"]  # the head "3" is not adapted
    layer = model.get_submodule("0")
    layer.out_mask[2] = False
    digest = hashlib.sha256()
    for key, mask in (("out_mask", layer.out_mask), ("in_mask", layer.in_mask)):
        digest.update(f"0.{key}:{tuple(mask.shape)};".encode())
        digest.update(bytes(int(v) for v in mask.tolist()))
    assert mask_fingerprint(model) == digest.hexdigest()


def test_mask_fingerprint_changes_with_one_channel():
    model = _model()
    before = mask_fingerprint(model)
    assert mask_fingerprint(_model()) == before
    model.get_submodule("0").out_mask[5] = False
    assert mask_fingerprint(model) != before


def test_mask_fingerprint_covers_hook_masks():
    model = _model()
    before = mask_fingerprint(model)
    mask = torch.ones(8, dtype=torch.bool)
    set_module_mask(model.get_submodule("2"), "out", mask)
    with_all_ones = mask_fingerprint(model)
    assert with_all_ones != before  # a new mask buffer appeared
    mask[1] = False
    set_module_mask(model.get_submodule("2"), "out", mask)
    assert mask_fingerprint(model) != with_all_ones


def test_assert_same_across_ranks_single_process_and_world_of_one(world_of_one):
    assert_same_across_ranks(mask_fingerprint(_model()))
    assert_same_across_ranks("not a hex digest", what="anything")


def test_broadcast_from_main_single_process_and_world_of_one(world_of_one):
    value = {"accuracy": 0.5, "bundle": "step-01/task.safetensors"}
    assert broadcast_from_main(value) == value


def test_synchronise_buffers_world_of_one_keeps_rank_zero_values(world_of_one):
    norm = nn.BatchNorm1d(3)
    norm.running_mean.copy_(torch.tensor([1.0, 2.0, 3.0]))
    synchronise_buffers(norm)
    torch.testing.assert_close(norm.running_mean, torch.tensor([1.0, 2.0, 3.0]))


def test_mask_fingerprint_covers_masks_of_bare_per_channel_parameters():
    from spa.distributed import mask_fingerprint

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(4))

    first, second = Scaled(), Scaled()
    set_parameter_mask(first, "scale", torch.tensor([True, True, False, True]))
    set_parameter_mask(second, "scale", torch.tensor([True, False, True, True]))
    assert mask_fingerprint(first) != mask_fingerprint(second)
    set_parameter_mask(second, "scale", torch.tensor([True, True, False, True]))
    assert mask_fingerprint(first) == mask_fingerprint(second)
