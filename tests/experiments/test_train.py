"""Tests for the explicit training loop, loaders and the paper's per-block learning rate."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from spa.errors import ConfigError
from spa.experiments.train import (
    block_learning_rate,
    evaluate,
    make_loader,
    make_optimizer,
    set_learning_rate,
    train_epoch,
)


def _dataset(count: int = 40) -> TensorDataset:
    inputs = torch.randn(count, 2)
    labels = (inputs[:, 0] > 0).long()
    return TensorDataset(inputs, labels)


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [(0, 1.0), (1, 1.0), (2, 0.2), (3, 0.2), (4, 0.04), (6, 0.008), (7, 0.008)],
)
def test_block_learning_rate_divides_by_five_each_quarter(epoch: int, expected: float) -> None:
    assert block_learning_rate(1.0, epoch, 8, "paper") == pytest.approx(expected)


def test_block_learning_rate_constant() -> None:
    assert block_learning_rate(0.3, 7, 8, "constant") == 0.3


def test_block_learning_rate_single_epoch_block_keeps_base() -> None:
    assert block_learning_rate(0.3, 0, 1, "paper") == 0.3


def test_make_loader_order_depends_only_on_seed_and_epoch() -> None:
    dataset = TensorDataset(torch.arange(30))

    def order(seed: int, epoch: int) -> list[int]:
        return [
            int(v)
            for (batch,) in make_loader(dataset, 7, shuffle=True, seed=seed, epoch=epoch)
            for v in batch
        ]

    torch.manual_seed(123)
    first = order(1, 2)
    torch.manual_seed(456)  # the global generator must not matter
    assert order(1, 2) == first
    assert order(1, 3) != first
    assert sorted(first) == list(range(30))


def test_make_loader_without_shuffle_keeps_order() -> None:
    dataset = TensorDataset(torch.arange(10))
    values = [int(v) for (batch,) in make_loader(dataset, 4, shuffle=False) for v in batch]
    assert values == list(range(10))


def test_evaluate_matches_hand_count() -> None:
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))  # predicts x0 > 0
    inputs = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [2.0, 0.0], [-3.0, 0.0]])
    labels = torch.tensor([1, 0, 0, 0])  # the third is wrong
    stats = evaluate(model, make_loader(TensorDataset(inputs, labels), 3, shuffle=False))
    expected_loss = nn.functional.cross_entropy(model(inputs), labels).item()
    assert stats.accuracy == 0.75
    assert stats.examples == 4
    assert stats.loss == pytest.approx(expected_loss)


def test_evaluate_restores_training_mode() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    model.train()
    evaluate(model, make_loader(_dataset(), 8, shuffle=False))
    assert model.training


def test_train_epoch_lowers_loss_and_respects_max_batches() -> None:
    dataset = _dataset()
    model = nn.Linear(2, 2)
    optimizer = make_optimizer(model, "sgd", 0.5, 0.0, 0.0)
    before = evaluate(model, make_loader(dataset, 40, shuffle=False)).loss
    for epoch in range(5):
        stats = train_epoch(model, make_loader(dataset, 8, shuffle=True, epoch=epoch), optimizer)
    after = evaluate(model, make_loader(dataset, 40, shuffle=False)).loss
    assert after < before
    limited = train_epoch(model, make_loader(dataset, 8, shuffle=True), optimizer, max_batches=2)
    assert stats.examples == 40 and limited.examples == 16


def test_make_optimizer_only_trainable_parameters() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].weight.requires_grad_(False)
    optimizer = make_optimizer(model, "adamw", 0.1, 0.9, 0.01)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(parameters) == 3
    assert all(p is not model[0].weight for p in parameters)
    set_learning_rate(optimizer, 0.02)
    assert optimizer.param_groups[0]["lr"] == 0.02


def test_make_optimizer_without_trainable_parameters_raises() -> None:
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        make_optimizer(model, "sgd", 0.1, 0.9, 0.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_train_epoch_stops_on_non_finite_loss_naming_the_batch(bad: float) -> None:
    from spa.errors import TrainingError

    inputs = torch.randn(12, 2)
    inputs[5, 0] = bad  # second batch of 4
    dataset = TensorDataset(inputs, torch.zeros(12, dtype=torch.long))
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    reference = nn.Linear(2, 2)
    reference.load_state_dict(model.state_dict())
    loss = nn.functional.cross_entropy(reference(inputs[:4]), torch.zeros(4, dtype=torch.long))
    loss.backward()
    loader = make_loader(dataset, 4, shuffle=False)
    message = r"^seed 0 epoch 1: the loss became (nan|inf) at batch 2"
    with pytest.raises(TrainingError, match=message):
        train_epoch(model, loader, optimizer, description="seed 0 epoch 1")
    # Only the first batch updated the weights (one plain SGD step), never the non-finite one.
    with torch.no_grad():
        for parameter, expected in zip(model.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(parameter, expected - 0.1 * expected.grad)
