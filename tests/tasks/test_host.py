"""TaskHost: one shared base, many bundles, PEFT-style switching verbs."""

from __future__ import annotations

import pytest
import torch

import spa
from spa.errors import BundleError, ConfigError
from spa.tasks import TaskHost, load_task, save_task

from ..conftest import ConvNet
from .helpers import outputs, saved_tasks, trained_task


@pytest.fixture
def setup(tmp_path):
    return saved_tasks(tmp_path, norm_statistics="exact")


def test_task_host_runs_the_active_task(setup):
    base, x, paths, models = setup
    host = TaskHost(base)
    host.add_task("a", paths["a"])
    host.add_task("b", paths["b"])
    assert host.tasks == ["a", "b"]
    for name in ("a", "b", "a"):
        host.set_task(name)
        assert host.active_task == name
        assert torch.equal(host(x), outputs(models[name], x))


def test_task_host_switching_does_not_copy_the_base(setup):
    base, _, paths, _ = setup
    host = TaskHost(base)
    host.add_task("a", paths["a"])
    host.set_task("a")
    model = host.model()
    base_storage = {p.data_ptr() for p in base.parameters()} | {
        b.data_ptr() for b in base.buffers()
    }
    shared = [t for t in model.state_dict().values() if t.data_ptr() in base_storage]
    assert shared  # unchanged tensors (e.g. num_batches_tracked, fc.bias) are the base's
    new_bytes = sum(
        t.numel() * t.element_size()
        for t in model.state_dict().values()
        if t.data_ptr() not in base_storage
    )
    adapted = sum(m.base.weight.numel() for _, m in spa.adapter_layers(setup[3]["a"]))
    assert new_bytes <= 4 * (adapted + 200)  # only the fused layers, norms and head are new


def test_task_host_cache_is_bounded(setup):
    base, x, paths, _ = setup
    host = TaskHost(base, cache_size=1)
    host.add_task("a", paths["a"])
    host.add_task("b", paths["b"])
    host.set_task("a")
    first = host.model()
    assert host.model() is first  # cached
    host.set_task("b")
    assert host.cached_tasks() == ["b"]
    host.set_task("a")
    assert host.model() is not first  # evicted, rebuilt
    assert torch.equal(host(x), outputs(first, x))


def test_task_host_delete_task(setup):
    base, _, paths, _ = setup
    host = TaskHost(base)
    host.add_task("a", paths["a"])
    host.set_task("a")
    host.delete_task("a")
    assert host.tasks == [] and host.active_task is None and host.cached_tasks() == []
    with pytest.raises(ConfigError, match="unknown task 'a'; registered tasks: \\(none\\)"):
        host.set_task("a")


def test_task_host_refuses_duplicate_name(setup):
    base, _, paths, _ = setup
    host = TaskHost(base)
    host.add_task("a", paths["a"])
    with pytest.raises(ConfigError, match="task 'a' is already registered"):
        host.add_task("a", paths["b"])


def test_task_host_call_without_active_task(setup):
    base, x, paths, _ = setup
    host = TaskHost(base)
    host.add_task("a", paths["a"])
    with pytest.raises(ConfigError, match="no active task; call set_task"):
        host(x)


def test_task_host_stays_usable_after_bad_bundle(setup, tmp_path):
    base, x, paths, models = setup
    host = TaskHost(base)
    host.add_task("a", paths["a"])
    host.set_task("a")
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(paths["b"].read_bytes()[:-10])
    with pytest.raises(BundleError, match="damaged.safetensors"):
        host.add_task("bad", damaged)
    foreign_base = ConvNet().eval()
    foreign = tmp_path / "foreign.safetensors"
    save_task(
        trained_task(foreign_base, spa.SPLoRAConfig(rank=2), x),
        foreign,
        base_model=foreign_base,
        keep_masks=True,
    )
    with pytest.raises(BundleError, match="trained against base"):
        host.add_task("foreign", foreign)
    assert host.tasks == ["a"] and host.active_task == "a"
    assert torch.equal(host(x), outputs(models["a"], x))


def test_task_host_report(setup):
    base, x, paths, models = setup
    host = TaskHost(base, example_inputs=(x,))
    host.add_task("a", paths["a"])
    report = host.report("a")
    assert report.bytes_on_disk == paths["a"].stat().st_size
    assert report.dparams == spa.count_learned_parameters(models["a"])
    assert report.adapter == "SPLoRAConfig"
    assert 0 < report.density < 1
    # masked, not compacted: FLOPs are the dense model's; a multiply-accumulate counts as two
    fused = load_task(base, paths["a"])
    batch, positions = x.shape[0], x.shape[2] * x.shape[3]
    macs = sum(
        batch * positions * m.out_channels * m.weight[0].numel()
        for m in (fused.conv1, fused.conv2, fused.conv3)
    )
    macs += batch * fused.fc.in_features * fused.fc.out_features
    assert report.flops == 2 * macs


def test_task_host_applies_finalize(setup):
    base, x, paths, models = setup
    seen = []

    def finalize(model):
        seen.append(model)
        return model

    host = TaskHost(base, finalize=finalize)
    host.add_task("a", paths["a"])
    host.set_task("a")
    assert seen == [host.model()]
    assert torch.equal(host(x), outputs(models["a"], x))
