"""wrap_model / rewrap_after_compaction / distributed_loader / learning-rate scaling."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import TensorDataset

import spa
from spa.distributed import (
    PAPER_LEARNING_RATE,
    PAPER_REFERENCE_BATCH_SIZE,
    distributed_loader,
    mask_fingerprint,
    per_device_batch_size,
    rewrap_after_compaction,
    scale_learning_rate,
    unused_parameters,
    unwrap_model,
    wrap_model,
)
from spa.errors import ConfigError
from spa.pruning import apply_masks, channel_groups, compact, compute_masks


def _adapted() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    return spa.adapt(model, spa.SPLoRAConfig(rank=2))


class TwoHeads(nn.Module):
    """`unused` never takes part in the forward."""

    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(4, 2)
        self.unused = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> dict:
        return {"logits": self.used(x), "count": 3}


def test_per_device_batch_size_divides():
    assert per_device_batch_size(64, 4) == 16
    assert per_device_batch_size(64) == 64  # single process


def test_per_device_batch_size_rejects_remainder():
    with pytest.raises(
        ConfigError, match="global batch size 10 must be a positive multiple of .*4"
    ):
        per_device_batch_size(10, 4)


def test_scale_learning_rate_linear_rule():
    assert (PAPER_REFERENCE_BATCH_SIZE, PAPER_LEARNING_RATE) == (64, 0.01)
    assert scale_learning_rate(0.01, 512) == pytest.approx(0.01 * 512 / 64)
    assert scale_learning_rate(0.1, 32, reference_batch_size=256) == pytest.approx(0.0125)


def test_scale_learning_rate_rejects_non_positive():
    with pytest.raises(ConfigError, match="global_batch_size=0"):
        scale_learning_rate(0.01, 0)


def test_distributed_loader_single_process_order_and_batches():
    dataset = TensorDataset(torch.arange(10))
    loader = distributed_loader(dataset, 4, shuffle=True, seed=5, epoch=2)
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(5 + 2)).tolist()
    batches = [batch.tolist() for (batch,) in loader]
    assert batches == [expected[0:4], expected[4:8], expected[8:10]]


def test_distributed_loader_rank_shards_union_is_the_global_batch(monkeypatch):
    dataset = TensorDataset(torch.arange(12))
    shards = []
    for rank in range(3):
        monkeypatch.setattr("spa.distributed.training.current_rank", lambda rank=rank: rank)
        monkeypatch.setattr("spa.distributed.training.current_world_size", lambda: 3)
        loader = distributed_loader(dataset, 6, shuffle=True, seed=1, epoch=0)
        shards.append([batch.tolist() for (batch,) in loader])
    order = torch.randperm(12, generator=torch.Generator().manual_seed(1)).tolist()
    for step in range(2):
        assert all(len(shard[step]) == 2 for shard in shards)  # 6 / 3 per rank
        union = sorted(value for shard in shards for value in shard[step])
        assert union == sorted(order[6 * step : 6 * (step + 1)])


def test_distributed_loader_rejects_indivisible_global_batch(monkeypatch):
    monkeypatch.setattr("spa.distributed.training.current_world_size", lambda: 2)
    with pytest.raises(ConfigError, match="global batch size 5"):
        distributed_loader(TensorDataset(torch.arange(4)), 5, shuffle=False)


def test_unused_parameters_found_without_side_effects():
    model = TwoHeads()
    model.train()
    assert unused_parameters(model, torch.randn(3, 4)) == ["unused.weight", "unused.bias"]
    assert model.training and all(p.grad is None for p in model.parameters())


def test_unused_parameters_none_for_adapted_model():
    assert unused_parameters(_adapted(), torch.randn(2, 6)) == []


def test_wrap_model_single_process_returns_model_on_device():
    model = _adapted()
    assert wrap_model(model, "cpu") is model
    assert unwrap_model(model) is model


@pytest.mark.slow  # the first DDP construction in a process takes ~2 s (lazy imports)
def test_wrap_model_world_of_one_gives_ddp(world_of_one):
    model = _adapted()
    wrapped = wrap_model(model, "cpu", example_inputs=torch.randn(2, 6))
    assert isinstance(wrapped, DistributedDataParallel)
    assert unwrap_model(wrapped) is model
    assert wrapped.find_unused_parameters is False
    assert isinstance(unwrap_model(wrap_model(wrapped)), nn.Sequential)  # re-wrap unwraps
    assert mask_fingerprint(wrapped) == mask_fingerprint(model)


@pytest.mark.slow  # the first DDP construction in a process takes ~2 s (lazy imports)
def test_wrap_model_world_of_one_detects_unused_parameters(world_of_one):
    wrapped = wrap_model(TwoHeads(), example_inputs=torch.randn(2, 4))
    assert wrapped.find_unused_parameters is True


def test_wrap_model_world_of_one_frozen_model_stays_plain(world_of_one):
    model = nn.Linear(3, 2).requires_grad_(False)
    assert wrap_model(model) is model


def _compact_half(model: nn.Module) -> None:
    x = torch.randn(2, 6)
    groups = channel_groups(model, x)
    scores = {i: torch.arange(g.size, dtype=torch.float32) for i, g in enumerate(groups)}
    apply_masks(model, compute_masks(groups, scores, 0.5))
    compact(model, x)


def _step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(torch.randn(4, 6)), torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()


def test_rewrap_after_compaction_rebuilds_optimizer_over_new_parameters():
    model = _adapted()
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9, nesterov=True
    )
    _step(model, optimizer)
    optimizer.param_groups[0]["lr"] = 0.01  # the current (scheduled) rate must survive
    old_down = model.get_submodule("0").down
    head_bias = model.get_submodule("4").bias  # pruning the head's inputs keeps its bias
    _compact_half(model)
    assert model.get_submodule("0").down is not old_down  # replaced by a smaller tensor
    wrapped, rebuilt = rewrap_after_compaction(model, optimizer, "cpu")
    assert wrapped is model  # single process: no DDP
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert [id(p) for p in rebuilt.param_groups[0]["params"]] == [id(p) for p in trainable]
    group = rebuilt.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"]) == (0.01, 0.9, True)
    # Unchanged tensors keep their momentum, replaced ones start afresh.
    assert model.get_submodule("4").bias is head_bias
    assert rebuilt.state[head_bias] is optimizer.state[head_bias]
    assert model.get_submodule("0").down not in rebuilt.state
    _step(model, rebuilt)  # trains with the new shapes


def test_rewrap_after_compaction_uses_factory_and_refuses_several_groups():
    model = _adapted()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    adapters = [p for n, p in trainable if n.endswith(("down", "up"))]
    others = [p for n, p in trainable if not n.endswith(("down", "up"))]
    optimizer = torch.optim.SGD([{"params": adapters}, {"params": others, "lr": 0.5}], lr=0.1)
    with pytest.raises(ConfigError, match="2 parameter groups; pass make_optimizer"):
        rewrap_after_compaction(model, optimizer)
    made = []

    def make(plain):
        made.append(plain)
        return torch.optim.Adam([p for p in plain.parameters() if p.requires_grad], lr=1e-3)

    _, rebuilt = rewrap_after_compaction(model, optimizer, make_optimizer=make)
    assert made == [model] and isinstance(rebuilt, torch.optim.Adam)
