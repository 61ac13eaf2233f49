"""TaskHost's byte budget and statistics, task names, base-change detection and signed task names
(issues 23 and 24)."""

from __future__ import annotations

import pytest
import torch

from spa.errors import BundleError, ConfigError
from spa.tasks import TaskHost, TaskStats, read_bundle
from spa.tasks.format import write_bundle
from spa.tasks.signing import generate_private_key, signer

from ..conftest import ConvNet
from .helpers import outputs, saved_tasks


@pytest.fixture
def setup(tmp_path):
    return saved_tasks(tmp_path)


def _new_bytes(model: torch.nn.Module, base: torch.nn.Module) -> int:
    """Bytes of the model's tensors that are not the base's (each storage once)."""
    base_storage = {t.untyped_storage().data_ptr() for t in base.state_dict().values()}
    own = {
        t.untyped_storage().data_ptr(): t.numel() * t.element_size()
        for t in model.state_dict().values()
        if t.untyped_storage().data_ptr() not in base_storage
    }
    return sum(own.values())


def test_task_host_stats_count_hits_builds_and_bytes(setup):
    base, x, paths, _ = setup
    host = TaskHost(base)
    host.add_task("a", paths["a"])
    assert host.stats("a") == TaskStats()
    for _ in range(3):
        host("a", x)
    stats = host.stats("a")
    assert (stats.builds, stats.hits, stats.evictions, stats.cached) == (1, 2, 0, True)
    assert stats.build_seconds > 0
    assert stats.bytes == _new_bytes(host.model("a"), base) > 0
    assert host.cache_bytes_used == stats.bytes


def test_task_host_byte_budget_evicts_least_recently_used(setup):
    base, x, paths, models = setup
    sizes = {}
    for name in ("a", "b"):
        probe = TaskHost(base)
        probe.add_task(name, paths[name])
        sizes[name] = _new_bytes(probe.model(name), base)
    budget = max(sizes.values()) + min(sizes.values())
    host = TaskHost(base, cache_size=None, cache_bytes=budget)
    for name, path in paths.items():
        host.add_task(name, path)
        host.add_task(f"{name}2", path)
    host("a", x), host("b", x)
    assert host.cached_tasks() == ["a", "b"]
    host("a", x)  # a is now the most recent
    host("a2", x)  # over budget: b goes first
    assert host.cached_tasks() == ["a", "a2"]
    assert host.stats("b").evictions == 1 and not host.stats("b").cached
    assert host.cache_bytes_used <= budget
    for name in ("a", "b", "a2", "b2"):
        assert torch.equal(host(name, x), outputs(models[name[0]], x))


def test_task_host_model_over_budget_is_served_but_not_cached(setup):
    base, x, paths, models = setup
    host = TaskHost(base, cache_bytes=1)
    host.add_task("a", paths["a"])
    for _ in range(2):
        assert torch.equal(host("a", x), outputs(models["a"], x))
    assert host.cached_tasks() == [] and host.stats("a").builds == 2


def test_task_host_refuses_bad_cache_limits(setup):
    base = setup[0]
    for options in ({"cache_size": 0}, {"cache_bytes": -1}, {"cache_bytes": 1.5}):
        with pytest.raises(ConfigError, match=next(iter(options))):
            TaskHost(base, **options)


@pytest.mark.parametrize("name", [None, "", " a", "a ", "a/b", "x\n", 7, "n" * 201])
def test_task_host_refuses_bad_task_names(setup, name):
    base, _, paths, _ = setup
    host = TaskHost(base)
    with pytest.raises(ConfigError, match="task name must be"):
        host.add_task(name, paths["a"])
    assert host.tasks == []


def test_task_host_call_names_its_task_without_touching_the_active_one(setup):
    base, x, paths, models = setup
    host = TaskHost(base)
    host.add_task("a", paths["a"])
    host.add_task("b", paths["b"])
    host.set_task("a")
    assert torch.equal(host("b", x), outputs(models["b"], x))
    assert host.active_task == "a"
    assert torch.equal(host(x), outputs(models["a"], x))


def test_task_host_refuses_a_changed_base(setup):
    base, x, paths, models = setup
    host = TaskHost(base)
    host.add_task("a", paths["a"])
    held = host.model("a")
    with torch.no_grad():
        base.conv1.weight.copy_(base.conv1.weight)  # written, same values: still valid
    assert torch.equal(host("a", x), outputs(models["a"], x))
    with torch.no_grad():
        base.bn1.running_mean.add_(1.0)
    for call in (lambda: host("a", x), lambda: host.add_task("b", paths["b"])):
        with pytest.raises(ConfigError, match="base model changed after the host was created"):
            call()
    assert held is not None  # models handed out before stay the caller's responsibility


def test_task_host_detects_a_replaced_base_tensor_and_data_writes(setup):
    base, x, paths, _ = setup
    host = TaskHost(base)
    host.add_task("a", paths["a"])
    base.fc.weight = torch.nn.Parameter(base.fc.weight.detach() * 2)
    with pytest.raises(ConfigError, match="fingerprint"):
        host("a", x)
    other = TaskHost(ConvNet().eval())
    other.base_model.fc.bias.data.add_(1.0)  # bypasses version counters: only verify sees it
    with pytest.raises(ConfigError, match="base model changed"):
        other.verify_base()


def _signed_for(path, task_name, key, folder):
    """The bundle at `path` signed by `key` as task `task_name` (file `task_name.safetensors`,
    the name also in its metadata), then copied over another task's file name `t1`."""
    bundle = read_bundle(path)
    bundle.metadata = {**bundle.metadata, "task_name": task_name}
    signed = folder / f"{task_name}.safetensors"
    write_bundle(signed, bundle, sign=signer(key))
    copied = folder / "t1.safetensors"
    copied.write_bytes(signed.read_bytes())
    return copied


def test_task_host_refuses_a_signed_bundle_recorded_for_another_task(setup, tmp_path):
    base, _, paths, _ = setup
    key = generate_private_key()
    copied = _signed_for(paths["b"], "t2", key, tmp_path)
    host = TaskHost(base, trusted_keys=[key.public_key()])
    with pytest.raises(BundleError, match="recorded for task 't2', not 't1'; pass rename=True"):
        host.add_task("t1", copied)
    assert host.tasks == []
    for name, options in (("t2", {}), ("t1", {"rename": True})):
        try:  # the name check passes; the rest is up to the bundle format
            host.add_task(name, copied, **options)
        except BundleError as error:
            assert "recorded for task" not in str(error)
