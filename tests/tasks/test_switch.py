"""Fast task switching (`SwitchPlan`): the same model as `load_task`, nothing shared or modified."""

from __future__ import annotations

import gc
import types

import pytest
import torch
from torch import nn

import spa
from spa.deploy import compacted
from spa.tasks import TaskHost, load_task, plan_task, read_bundle, save_task
from spa.tasks.scratch import Scratch
from spa.tasks.switch import compile_switch

from ..conftest import ConvNet, ResidualNet, mlp
from .bundle_fuzz import _compact_mlp
from .helpers import outputs, pruned_task, trained_task


@pytest.fixture
def residual_tasks(tmp_path):
    """A residual net and three compacted SPLoRA bundles of it (3x3, strided and 1x1 convs)."""
    base = ResidualNet().eval()
    x = torch.randn(2, 3, 8, 8)
    paths, models = {}, {}
    for name, density in (("a", 0.6), ("b", 0.4), ("c", 0.5)):
        models[name] = pruned_task(base, x, spa.SPLoRAConfig(rank=2), density)
        paths[name] = tmp_path / f"{name}.safetensors"
        save_task(compacted(models[name]), paths[name], base_model=base)
    return base, x, paths, models


def _new_tensors(model: nn.Module, base: nn.Module) -> dict[str, torch.Tensor]:
    """The task model's tensors that do not live in the base's storage."""
    base_storage = {t.untyped_storage().data_ptr() for t in base.state_dict().values()}
    return {
        key: t
        for key, t in model.state_dict().items()
        if t.untyped_storage().data_ptr() not in base_storage
    }


def _built_both_ways(base, path):
    plan = compile_switch(base, plan_task(base, read_bundle(path)))
    return plan, plan.build(Scratch()), load_task(base, path)


def test_switch_plan_builds_exactly_the_load_task_model(residual_tasks):
    base, x, paths, models = residual_tasks
    for name, path in paths.items():
        plan, built, reference = _built_both_ways(base, path)
        assert plan.gathered == 4  # every adapted conv, none left to the general build
        assert built.state_dict().keys() == reference.state_dict().keys()
        for key, tensor in reference.state_dict().items():
            assert torch.equal(built.state_dict()[key], tensor), key
        assert torch.equal(outputs(built, x), outputs(reference, x))
        assert not built.training and not any(m.training for m in built.modules())
        # and the trained, masked model (an independent computation) to float rounding
        torch.testing.assert_close(outputs(built, x), outputs(models[name], x))
        assert sum(p.numel() for p in built.parameters()) < sum(
            p.numel() for p in base.parameters()
        )


@pytest.mark.parametrize(
    "kind", ["splora_mlp", "grouped_convnet", "fine_pruning", "pruning_only", "masked"]
)
def test_switch_plan_matches_load_task_for_other_layers(tmp_path, kind):
    """Linear layers with biases and unsorted kept indices, grouped and depth-wise convs, and
    entries built by their plan (fine-pruned weights, masks that are not all ones)."""
    if kind == "splora_mlp":
        base, x = mlp(in_features=12, hidden=16).eval(), torch.randn(4, 12)
        model = pruned_task(base, x, spa.SPLoRAConfig(rank=2), 1.0)
        _compact_mlp(model, [9, 0, 3, 12])
        options, gathered = {}, 2
    elif kind == "grouped_convnet":
        base, x = ConvNet().eval(), torch.randn(2, 4, 6, 6)
        model, options, gathered = pruned_task(base, x, spa.SPLoRAConfig(rank=2), 0.5), {}, 3
    elif kind in ("fine_pruning", "pruning_only"):  # trained weights stored, or the base's
        base, x = ResidualNet().eval(), torch.randn(2, 3, 8, 8)
        model, options = pruned_task(base, x, spa.FinePruningConfig(), 0.5), {}
        gathered = 0 if kind == "fine_pruning" else 4
        for _, layer in spa.adapter_layers(model):
            if kind == "fine_pruning":
                with torch.no_grad():
                    layer.base.weight.add_(torch.randn_like(layer.base.weight))
    else:
        base, x = ConvNet().eval(), torch.randn(2, 4, 6, 6)
        model = trained_task(base, spa.SPLoRAConfig(rank=2), x)
        options, gathered = {"keep_masks": True, "norm_statistics": "folded"}, 0
    path = tmp_path / "task.safetensors"
    save_task(model if options else compacted(model), path, base_model=base, **options)
    plan, built, reference = _built_both_ways(base, path)
    assert plan.gathered == gathered
    for key, tensor in reference.state_dict().items():
        assert torch.equal(built.state_dict()[key], tensor), key
    assert torch.equal(outputs(built, x), outputs(reference, x))


def test_task_host_switching_back_gives_the_exact_outputs(residual_tasks):
    base, x, paths, models = residual_tasks
    host = TaskHost(base, cache_size=1)
    for name, path in paths.items():
        host.add_task(name, path)
    host.set_task("a")
    first_model, first = host.model(), host(x)
    for name in ("b", "c", "a", "b", "a"):  # every switch is cold: the cache holds one model
        host.set_task(name)
        assert host.cached_tasks() == [name]
        assert torch.equal(host(x), outputs(load_task(base, paths[name]), x))
    assert host.model() is not first_model  # rebuilt
    assert torch.equal(host(x), first)
    assert torch.equal(outputs(first_model, x), first)  # the evicted model still works
    assert not torch.equal(first, outputs(models["b"], x))


def test_task_host_never_modifies_the_base(residual_tasks):
    base, x, paths, _ = residual_tasks
    before = {k: (t.clone(), t.data_ptr()) for k, t in base.state_dict().items()}
    expected = outputs(base, x)
    host = TaskHost(base, cache_size=1, example_inputs=(x,))
    for name, path in paths.items():
        host.add_task(name, path)
    for name in ["a", "b", "c"] * 4:
        host.set_task(name)
        host(x)
    for key, tensor in base.state_dict().items():
        assert torch.equal(tensor, before[key][0]) and tensor.data_ptr() == before[key][1], key
    assert torch.equal(outputs(base, x), expected)
    assert all(isinstance(m, nn.Conv2d | nn.BatchNorm2d | nn.Linear) for m in base.children())
    assert base.stem.weight.shape == (8, 3, 3, 3)  # attributes and shapes untouched


def test_task_models_share_no_tensor_a_switch_writes(residual_tasks):
    """New tensors of one task model never alias another task's, another build of the same task,
    or the base; changing one model in place changes no other model or later build."""
    base, x, paths, _ = residual_tasks
    host = TaskHost(base, cache_size=1)
    for name, path in paths.items():
        host.add_task(name, path)
    built = []
    for name in ("a", "b", "a"):
        host.set_task(name)
        built.append((name, host.model(), host(x)))
    storages = [
        {t.untyped_storage().data_ptr() for t in _new_tensors(model, base).values()}
        for _, model, _ in built
    ]
    assert all(storages)
    assert not storages[0] & storages[1] and not storages[0] & storages[2]
    assert not storages[1] & storages[2]
    with torch.no_grad():
        for tensor in _new_tensors(built[0][1], base).values():
            tensor.add_(1.0)  # vandalise the first model of task a
    assert not torch.equal(outputs(built[0][1], x), built[0][2])
    assert torch.equal(outputs(built[1][1], x), built[1][2])
    assert torch.equal(outputs(built[2][1], x), built[2][2])
    host.set_task("b")
    host.set_task("a")  # a fresh build of task a is unaffected
    assert torch.equal(host(x), built[2][2])


def _held_bytes(root: object, exclude: set[int]) -> int:
    """Bytes of tensor storage reachable from `root` through containers and instances, leaving
    out storages whose address is in `exclude`."""
    atoms = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, str, bytes)
    seen, stack, storages = set(), [root], {}
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, atoms):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            continue
        stack.extend(gc.get_referents(obj))
    return sum(size for address, size in storages.items() if address not in exclude)


def test_task_host_keeps_no_copy_of_the_base_per_task(residual_tasks, tmp_path):
    base, x, paths, _ = residual_tasks
    base_storage = {t.untyped_storage().data_ptr() for t in base.state_dict().values()}
    base_bytes = sum(t.untyped_storage().nbytes() for t in base.state_dict().values())
    host = TaskHost(base, cache_size=1)
    held = []
    for index in range(6):
        name = f"t{index}"
        host.add_task(name, paths["abc"[index % 3]])
        host.set_task(name)
        cached = {t.untyped_storage().data_ptr() for t in host.model().state_dict().values()}
        held.append(_held_bytes(host, base_storage | cached))
    smallest_model = min(
        sum(
            t.untyped_storage().nbytes() for t in _new_tensors(load_task(base, path), base).values()
        )
        for path in paths.values()
    )
    per_task = (held[-1] - held[0]) / (len(held) - 1)
    assert 0 < per_task < smallest_model / 2  # not even half a materialised task model
    assert per_task < base_bytes / 5
    assert held[0] < base_bytes  # one plan plus scratch space (a slice of one layer)
