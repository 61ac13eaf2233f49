"""load_task(..., trainable=True): the bundle as the adapted, masked model that trains on.

References: the trained task model before saving and `load_task`'s compacted model.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import spa
from spa.deploy import compacted
from spa.errors import BundleError, ConfigError
from spa.tasks import load_task, save_task

from .._transformers import CASES
from ..conftest import ResidualNet
from .helpers import outputs, pruned_task

CONFIGS = [spa.SPLoRAConfig(rank=2), spa.FinePruningConfig()]


def _trained(base: nn.Module, config, x: torch.Tensor) -> nn.Module:
    """A pruned task model whose factors, fine-pruned weights, norms and biases moved."""
    torch.manual_seed(1)
    model = pruned_task(base, x, config, 0.5)
    masks = [m for _, layer in spa.adapter_layers(model) for m in layer.masks().values()]
    assert not all(bool(m.all()) for m in masks), "the task must be pruned"
    with torch.no_grad():
        for _, layer in spa.adapter_layers(model):
            for parameter in layer.trainable_parameters():
                parameter.add_(0.3 * torch.randn_like(parameter))
        for parameter in model.parameters():
            if parameter.requires_grad and parameter.dim() == 1:  # norms, biases
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


def _save(model, base, x, path) -> None:
    save_task(compacted(model, (x,)), path, base_model=base)


def _cases():
    """A small CNN and every tiny `transformers` family (each well under a second)."""
    cnn = (ResidualNet, lambda: torch.randn(2, 3, 8, 8))
    cases = [pytest.param(*cnn, c, id=f"cnn-{type(c).__name__}") for c in CONFIGS]
    for case in CASES:
        for config in CONFIGS:
            name = f"{case.family}-{type(config).__name__}"
            cases.append(pytest.param(case.build, case.inputs, config, id=name))
    return cases


@pytest.mark.parametrize(("make", "inputs", "config"), _cases())
def test_trainable_load_matches_and_trains(tmp_path, make, inputs, config):
    torch.manual_seed(0)
    base, x = make().eval(), inputs()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    trained = _trained(base, config, x)
    path = tmp_path / "task.safetensors"
    _save(trained, base, x, path)
    reference = outputs(load_task(base, path), x)

    model = load_task(base, path, trainable=True, example_inputs=(x,))
    assert spa.adapter_layers(model), "the trainable model keeps the adapter layers"
    # (1) masked == compacted, and == the trained model before saving
    torch.testing.assert_close(outputs(model, x), reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs(model, x), outputs(trained, x), rtol=1e-5, atol=1e-5)
    # the same parameters train as in the trained model (names and count)
    trains = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trains == {n for n, p in trained.named_parameters() if p.requires_grad}
    assert trains
    # masks are the trained model's
    for (name, layer), (_, ref) in zip(
        spa.adapter_layers(model), spa.adapter_layers(trained), strict=True
    ):
        for key, mask in layer.masks().items():
            assert torch.equal(mask, ref.masks()[key]), (name, key)

    # (2) training continues: one step changes the output, the base never moves
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    model(x).square().mean().backward()
    optimizer.step()
    moved = outputs(model, x)
    assert not torch.allclose(moved, reference, rtol=1e-4, atol=1e-4)
    for key, value in base.state_dict().items():
        assert torch.equal(value, before[key]), key

    # saving it again round-trips
    again = tmp_path / "again.safetensors"
    _save(model, base, x, again)
    torch.testing.assert_close(outputs(load_task(base, again), x), moved, rtol=1e-5, atol=1e-5)


def test_trainable_load_refuses_folded_norms(tmp_path):
    base, x = ResidualNet().eval(), torch.randn(2, 3, 8, 8)
    trained = _trained(base, spa.SPLoRAConfig(rank=2), x)
    path = tmp_path / "task.safetensors"
    save_task(compacted(trained, (x,)), path, base_model=base, norm_statistics="folded")
    with pytest.raises(BundleError, match="folded norm statistics"):
        load_task(base, path, trainable=True)


def test_trainable_load_refuses_splopa(tmp_path):
    base = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    config = spa.SPLoPAConfig(block_shape=(4, 4), num_prototypes=2, prototype_rank=1)
    model = spa.task_model(copy.deepcopy(base), config)
    path = tmp_path / "task.safetensors"
    save_task(model, path, base_model=base)
    with pytest.raises(BundleError, match="'splopa' cannot be loaded for training"):
        load_task(base, path, trainable=True)


def test_trainable_load_of_pruned_traced_model_needs_example_inputs(tmp_path):
    base, x = ResidualNet().eval(), torch.randn(2, 3, 8, 8)
    path = tmp_path / "task.safetensors"
    _save(_trained(base, spa.SPLoRAConfig(rank=2), x), base, x, path)
    with pytest.raises(ConfigError, match="pass example_inputs"):
        load_task(base, path, trainable=True)


@pytest.mark.parametrize("index", [0, 1], ids=["splora", "fine-pruning"])
def test_trainable_load_reads_kept_positions_off_compaction_records(tmp_path, monkeypatch, index):
    """Narrowed norms and heads are restored from compaction's records on a `meta` copy: no
    tensor is tagged with its flat indices (that path is for two-axis narrowing only)."""
    from spa.tasks import trainable

    make, inputs, config = _cases()[index].values
    torch.manual_seed(0)
    base, x = make().eval(), inputs()
    trained = _trained(base, config, x)
    path = tmp_path / "task.safetensors"
    _save(trained, base, x, path)
    narrowed = []
    kept_positions = trainable._kept_positions
    monkeypatch.setattr(trainable, "_flat_positions", lambda *a: pytest.fail("tagged a copy"))
    monkeypatch.setattr(
        trainable, "_kept_positions", lambda m, w: narrowed.extend(w) or kept_positions(m, w)
    )
    model = load_task(base, path, trainable=True, example_inputs=(x,))
    assert narrowed  # the task has narrowed module tensors to restore
    torch.testing.assert_close(outputs(model, x), outputs(trained, x), rtol=1e-5, atol=1e-5)
