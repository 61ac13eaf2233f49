"""`task_facts` computes what a bundle records about a task, and `save_task(facts=)` writes the
facts it is handed instead of computing them."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import spa
from spa.tasks import save_task
from spa.tasks.facts import task_facts

from ..conftest import ConvNet
from .helpers import pruned_task

CONVS = ("conv1", "conv2", "conv3")


@pytest.fixture(scope="module")
def task():
    torch.manual_seed(0)
    base = ConvNet().eval()
    example = torch.randn(2, 4, 8, 8)
    return spa.compacted(pruned_task(base, example, spa.SPLoRAConfig(rank=2), 0.5)), base


def test_task_facts_density_is_kept_base_weights_over_the_base_layers_weights(task):
    model, base = task
    kept = sum(model.get_submodule(name).base.weight.numel() for name in CONVS)
    total = sum(base.get_submodule(name).weight.numel() for name in CONVS)
    facts = task_facts(model, base)
    assert kept < total
    assert facts.density == pytest.approx(kept / total)


def test_task_facts_trained_modules_are_the_declared_groups_of_the_base(task):
    model, base = task
    assert task_facts(model, base).trained_modules == ("bn1", "bn2", "bn3", "fc")
    plain = spa.adapt(ConvNet().eval(), spa.SPLoRAConfig(rank=2, trainable=()))
    assert task_facts(plain, ConvNet().eval()).trained_modules == ()


def test_task_facts_name_the_base_and_the_adapter(task):
    model, base = task
    facts = task_facts(model, base)
    assert facts.architecture == "ConvNet"
    assert facts.adapter["type"] == "SPLoRAConfig" and facts.adapter["config"]["rank"] == 2
    assert facts.adapter["head"] == ["fc"]
    changed = copy.deepcopy(base)
    with torch.no_grad():
        changed.fc.bias[0] += 1  # one value: another fingerprint, the same structure
    assert task_facts(model, changed).base_fingerprint != facts.base_fingerprint
    assert task_facts(model, changed).base_structure == facts.base_structure


def test_save_task_writes_the_facts_it_is_handed(task, tmp_path):
    model, base = task
    computed = task_facts(model, base)
    given = dataclasses.replace(computed, architecture="Given", density=0.125, trained_modules=())
    bundle = save_task(model, tmp_path / "task.safetensors", base_model=base, facts=given)
    assert bundle.metadata["architecture"] == "Given"
    assert bundle.metadata["density"] == 0.125
    assert {entry["path"] for entry in bundle.metadata["modules"]} <= {"bn1", "bn2", "bn3", "fc"}
    default = save_task(model, tmp_path / "default.safetensors", base_model=base)
    assert default.metadata["density"] == computed.density != 0.125
    assert [e["path"] for e in default.metadata["modules"]] == ["bn1", "bn2", "bn3", "fc"]
