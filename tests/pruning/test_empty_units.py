"""Removal of heads and FFN neurons emptied by block pruning, for every described family."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import spa
from spa.adapters.protocols import adapter_layers
from spa.errors import ConfigError, UnsupportedLayerError
from spa.families import block_layouts, describe, head_counts
from spa.pruning.block_criteria import create_block_criterion
from spa.pruning.empty_units import remove_empty_units, without_empty_units
from spa.pruning.gradual import GradualBlockPruner, GradualPruningConfig
from tests._transformers import CASES, FFN
from tests.conftest import mlp

HEAD_DIM = 8  # = block size: one block row per head
IDS = [case.family for case in CASES]
CRITERION_OPTIONS = {
    "magnitude": {},
    "movement": {"score_learning_rate": 1.0},
    "soft_movement": {"penalty_weight": 50.0, "score_learning_rate": 1.0, "threshold": 0.45},
    "l0": {"penalty_weight": 50.0, "score_learning_rate": 1.0, "initial_log_alpha": 0.3},
}


def _block_adapted(case):
    model = case.build().eval()
    base = copy.deepcopy(model)
    spa.adapt(model, spa.SPLoPAConfig(block_shape=(HEAD_DIM, HEAD_DIM), num_prototypes=2))
    for _, layer in adapter_layers(model):
        with torch.no_grad():
            layer.block_weights.normal_()
    return base, model


def _kill(model, path: str, rows=None, columns=None) -> None:
    layer = model.get_submodule(path)
    with torch.no_grad():
        if rows is not None:
            layer.block_mask[rows] = False
        if columns is not None:
            layer.block_mask[:, columns] = False


def _kill_units(model) -> tuple[str, str]:
    """Empty the value rows of the first key/value head and FFN neurons 0-7 of the first block."""
    layout = block_layouts(model, describe(model))[0]
    if layout.qkv is not None:
        width = head_counts(model, layout)["width"]
        _kill(model, layout.qkv, rows=2 * width // HEAD_DIM)  # the value third's first head
    else:
        _kill(model, layout.value, rows=0)
    _kill(model, layout.ffn_inputs[0], rows=0)  # neuron block 0: a zero input row
    _kill(model, layout.ffn_output, columns=1)  # neuron block 1: a zero down column
    return layout.attention, layout.ffn


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_remove_empty_units_matches_the_block_masked_model(case):
    _, model = _block_adapted(case)
    attention, ffn = _kill_units(model)
    x = case.inputs()
    with torch.no_grad():
        expected = model(x)
    fused = spa.fuse(model)
    before = sum(p.numel() for p in fused.parameters())
    report = remove_empty_units(fused)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), expected, rtol=1e-4, atol=1e-5)
    groups = 1 if case.family != "llama" else 2  # query heads per key/value head
    assert report.removed_heads[attention][:groups] == list(range(groups))
    assert report.removed_neurons[ffn] >= HEAD_DIM * (1 if case.family == "llama" else 2)
    assert report.parameters_after == sum(p.numel() for p in fused.parameters()) < before
    layout = block_layouts(fused, describe(fused))[0]
    assert head_counts(fused, layout)["neurons"] == FFN - report.removed_neurons[ffn]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_remove_empty_units_on_a_task_loaded_through_task_host(case, tmp_path):
    base, model = _block_adapted(case)
    _kill_units(model)
    x = case.inputs()
    with torch.no_grad():
        expected = model(x)
    path = tmp_path / "task.safetensors"
    spa.save_task(spa.compacted(model), path, base_model=base)
    plain = spa.load_task(base, path)
    host = spa.TaskHost(base, finalize=without_empty_units)
    host.add_task("task", path)
    task = host.model("task")
    with torch.no_grad():
        torch.testing.assert_close(task(x), expected, rtol=1e-4, atol=1e-5)
    smaller = sum(p.numel() for p in task.parameters())
    assert smaller < sum(p.numel() for p in plain.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("criterion", list(CRITERION_OPTIONS))
@pytest.mark.parametrize("case", [c for c in CASES if c.family != "vit"], ids=lambda c: c.family)
def test_every_block_criterion_then_removal_is_exact(case, criterion):
    _, model = _block_adapted(case)
    config = GradualPruningConfig(final_density=0.25, warmup_steps=0, pruning_steps=2)
    pruner = GradualBlockPruner(
        model, create_block_criterion(criterion, **CRITERION_OPTIONS[criterion]), config
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    x, y = case.inputs(), torch.tensor([0, 2])
    for _ in range(3):
        loss = F.cross_entropy(model(x), y) + pruner.penalty()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        pruner.step()
    pruner.finish()
    model.eval()
    with torch.no_grad():
        expected = model(x)
    fused = spa.fuse(model)
    remove_empty_units(fused)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), expected, rtol=1e-4, atol=1e-5)


def test_remove_empty_units_refuses_adapted_and_undescribed_models():
    case = CASES[0]
    _, model = _block_adapted(case)
    with pytest.raises(ConfigError, match="fuse the model first"):
        remove_empty_units(model)
    with pytest.raises(UnsupportedLayerError, match="not described"):
        remove_empty_units(mlp())
