"""Structural validation of bundles edited by a hostile sender who recomputes the checksum.

Each test edits a valid bundle the way issue 13 found loading silently wrong or crashing, writes
it back with `write_bundle` (which recomputes the layout and the in-file checksum, as an attacker
would), and checks that `load_task` refuses it with a `BundleError` naming the entry at fault.
"""

from __future__ import annotations

import copy
import json
import os
import stat
import struct

import pytest
import torch

import spa
from spa.deploy import compacted
from spa.errors import BundleError, SpaWarning
from spa.models import create_model
from spa.tasks import TaskHost, build_task, load_task, plan_task, read_bundle, save_task
from spa.tasks.format import write_atomic, write_bundle

from ..conftest import ConvNet, mlp
from .helpers import outputs, trained_task

X = (2, 4, 6, 6)


@pytest.fixture
def saved(tmp_path):
    """A SPLoRA task on ConvNet (masks, trained norms and head), saved uncompacted."""
    base = ConvNet().eval()
    x = torch.randn(X)
    model = trained_task(base, spa.SPLoRAConfig(rank=2), x)
    path = tmp_path / "task.safetensors"
    save_task(model, path, base_model=base, keep_masks=True)
    return base, x, path, outputs(model, x)


def _rewrite(path, edit) -> None:
    """Apply `edit(bundle)` to the bundle at `path` and write it back with a fresh checksum."""
    bundle = read_bundle(path)
    bundle.metadata = json.loads(json.dumps(bundle.metadata))
    edit(bundle)
    for key in ("tensor_layout", "checksum"):
        bundle.metadata.pop(key, None)
    write_bundle(path, bundle)


def _layer(bundle, path: str) -> dict:
    return next(e for e in bundle.metadata["layers"] if e["path"] == path)


def test_resealed_bundle_without_edits_still_loads(saved):
    base, x, path, expected = saved
    _rewrite(path, lambda bundle: None)
    assert torch.equal(outputs(load_task(base, path), x), expected)


@pytest.mark.parametrize("rank", ["2", 2.0, True, None, -1])
def test_load_task_refuses_ill_typed_rank(saved, rank):
    base, _, path, _ = saved
    _rewrite(path, lambda bundle: _layer(bundle, "conv2").update(rank=rank))
    with pytest.raises(BundleError, match=r"layer 'conv2': field 'rank' has an invalid value"):
        load_task(base, path)


def test_load_task_refuses_rank_zero_with_stored_factors(saved):
    base, _, path, _ = saved
    _rewrite(path, lambda bundle: _layer(bundle, "conv2").update(rank=0))
    with pytest.raises(BundleError, match=r"'layers.conv2.down'.*not used by any entry"):
        load_task(base, path)


def test_load_task_refuses_dropped_norm_entry_with_its_tensors(saved):
    base, _, path, _ = saved

    def drop(bundle):
        bundle.metadata["modules"] = [m for m in bundle.metadata["modules"] if m["path"] != "bn1"]
        bundle.tensors = {
            k: t for k, t in bundle.tensors.items() if not k.startswith("modules.bn1.")
        }

    _rewrite(path, drop)
    with pytest.raises(BundleError, match=r"no entry for module\(s\) \['bn1'\]"):
        load_task(base, path)


def test_load_task_refuses_dropped_layer_entry(saved):
    base, _, path, _ = saved
    _rewrite(
        path,
        lambda bundle: bundle.metadata.update(
            layers=[e for e in bundle.metadata["layers"] if e["path"] != "conv3"]
        ),
    )
    with pytest.raises(BundleError, match=r"'layers.conv3.down'.*not used by any entry"):
        load_task(base, path)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float16])
def test_load_task_refuses_module_tensor_of_another_dtype(saved, dtype):
    base, _, path, _ = saved

    def retype(bundle):
        bundle.tensors["modules.bn1.running_mean"] = bundle.tensors["modules.bn1.running_mean"].to(
            dtype
        )
        record = bundle.metadata["modules"][0]["tensors"]["running_mean"]
        record[1] = str(dtype).removeprefix("torch.")

    _rewrite(path, retype)
    with pytest.raises(BundleError, match=r"module 'bn1': tensor 'running_mean' declared"):
        load_task(base, path)


def test_load_task_refuses_changed_module_path(saved):
    base, _, path, _ = saved

    def move(bundle):
        entry = next(m for m in bundle.metadata["modules"] if m["path"] == "bn1")
        entry["path"] = "bn2"

    _rewrite(path, move)
    with pytest.raises(BundleError, match="appear more than once|modules.bn2"):
        load_task(base, path)


def test_load_task_refuses_out_of_range_and_repeated_indices(tmp_path):
    base = mlp(in_features=12, hidden=16).eval()
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2))
    model.get_submodule("0").select_channels(out_positions=torch.tensor([9, 0, 3]))
    model.get_submodule("2").select_channels(in_positions=torch.tensor([9, 0, 3]))
    path = tmp_path / "task.safetensors"
    save_task(compacted(model), path, base_model=base)
    assert read_bundle(path).metadata["layers"][0]["out_selection"] == "indices"
    for values, message in (
        ([9, 0, 16], "output channel index outside the base's 16"),
        ([9, 0, 0], "repeated output channel index"),
    ):
        indices = torch.tensor(values, dtype=torch.int32)
        _rewrite(path, lambda bundle, i=indices: bundle.tensors.update({"layers.0.out_indices": i}))
        with pytest.raises(BundleError, match=f"layer '0': {message}"):
            load_task(base, path)


def test_read_bundle_refuses_duplicate_header_keys(saved):
    _, _, path, _ = saved
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = data[8 : 8 + size].decode().rstrip()
    name = next(k for k in json.loads(header) if k != "__metadata__")
    decoy = json.dumps({"dtype": "float32", "shape": [0], "data_offsets": [0, 0]})
    header = "{" + json.dumps(name) + ":" + decoy + "," + header[1:]
    raw = header.encode() + b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + size :])
    with pytest.raises(BundleError, match=f"duplicate key '{name}'"):
        read_bundle(path)


def test_load_task_refuses_swapped_layout_names(saved):
    base, _, path, _ = saved
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    text = header["__metadata__"]["spa_bundle"]
    text = text.replace("modules.bn1.bias", "@@").replace("modules.bn1.weight", "modules.bn1.bias")
    header["__metadata__"]["spa_bundle"] = text.replace("@@", "modules.bn1.weight")
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + size :])
    with pytest.raises(BundleError, match="out of order or repeated"):
        read_bundle(path)  # refused before the checksum is even compared


def test_load_task_refuses_attribute_its_tensors_contradict(saved):
    base, _, path, _ = saved

    def narrow(bundle):
        entry = next(m for m in bundle.metadata["modules"] if m["path"] == "bn1")
        entry["attributes"] = {"num_features": 7}

    _rewrite(path, narrow)
    with pytest.raises(BundleError, match=r"shape mismatch at module 'bn1'"):
        load_task(base, path)


def test_load_task_refuses_changed_conv_stride(saved):
    base, _, path, _ = saved
    _rewrite(path, lambda bundle: _layer(bundle, "conv2").update(attributes={"stride": [2, 2]}))
    with pytest.raises(BundleError, match=r"layer 'conv2': attribute 'stride' of a Conv2d cannot"):
        load_task(base, path)


def test_load_task_refuses_unknown_field(saved):
    base, _, path, _ = saved
    _rewrite(path, lambda bundle: _layer(bundle, "conv1").update(scale=2))
    with pytest.raises(BundleError, match=r"layer 'conv1': unknown field\(s\) \['scale'\]"):
        load_task(base, path)


def test_non_strict_fingerprint_never_relaxes_the_architecture(tmp_path):
    base18 = create_model("resnet18", num_classes=3, width=4).eval()
    base34 = create_model("resnet34", num_classes=3, width=4).eval()
    model = spa.adapt(copy.deepcopy(base18), spa.SPLoRAConfig(rank=1))
    path = tmp_path / "task.safetensors"
    save_task(compacted(model), path, base_model=base18)
    with pytest.raises(BundleError, match="made for another architecture"):
        load_task(base34, path, strict_fingerprint=False)
    other18 = create_model("resnet18", num_classes=3, width=4).eval()  # other weights
    with pytest.warns(SpaWarning, match="trained against base"):
        load_task(other18, path, strict_fingerprint=False)


def test_task_host_keeps_serving_after_refused_adds(saved, tmp_path):
    base, x, path, expected = saved
    host = TaskHost(base)
    host.add_task("good", path)
    host.set_task("good")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes())
    _rewrite(bad, lambda bundle: _layer(bundle, "conv2").update(rank="2"))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:100])
    for name, file in (("bad", bad), ("truncated", truncated), ("missing", tmp_path / "no")):
        with pytest.raises(BundleError):
            host.add_task(name, file)
        assert host.tasks == ["good"] and host.active_task == "good"
        assert torch.equal(host(x), expected)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_are_written_with_the_umask_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_atomic(tmp_path / "file.bin", b"data")
        (tmp_path / "reference.bin").write_bytes(b"data")  # what open() gives
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "file.bin").stat().st_mode)
    assert mode == 0o666 & ~umask
    assert mode == stat.S_IMODE((tmp_path / "reference.bin").stat().st_mode)


def test_save_task_writes_a_group_readable_bundle_under_umask_022(tmp_path):
    base = ConvNet().eval()
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2))
    old = os.umask(0o022)
    try:
        save_task(compacted(model), tmp_path / "task.safetensors", base_model=base)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "task.safetensors").stat().st_mode) == 0o644


def _narrow_conv1(bundle) -> None:
    """Rewrite conv1 coherently to 7 output channels; bn1 still expects 8 (a cross-module
    inconsistency that only running the model shows)."""
    entry = _layer(bundle, "conv1")
    entry.update(shape=[7, entry["shape"][1]], out_selection="indices")
    entry["attributes"] = {"out_channels": 7}
    bundle.tensors = dict(bundle.tensors)
    bundle.tensors["layers.conv1.out_indices"] = torch.arange(7, dtype=torch.int32)
    bundle.tensors["layers.conv1.down"] = bundle.tensors["layers.conv1.down"][:7].clone()


def test_task_host_with_example_inputs_refuses_a_model_that_cannot_run(tmp_path):
    base = ConvNet().eval()
    x = torch.randn(X)
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2))
    good, bad = tmp_path / "good.safetensors", tmp_path / "bad.safetensors"
    save_task(compacted(model), good, base_model=base)
    save_task(compacted(model), bad, base_model=base)
    _rewrite(bad, _narrow_conv1)
    with pytest.raises(RuntimeError):  # each entry is valid on its own; the chain is not
        load_task(base, bad)(x)
    host = TaskHost(base, example_inputs=(x,))
    host.add_task("good", good)
    host.set_task("good")
    with pytest.raises(BundleError, match="does not run on the host's example inputs"):
        host.add_task("bad", bad)
    assert host.tasks == ["good"]
    assert torch.equal(host(x), outputs(model, x))


def test_bundle_returned_by_save_task_plans_like_the_file(tmp_path):
    base = ConvNet().eval()
    x = torch.randn(X)
    model = trained_task(base, spa.SPLoRAConfig(rank=2), x)
    bundle = save_task(model, tmp_path / "task.safetensors", base_model=base, keep_masks=True)
    assert bundle.metadata == read_bundle(tmp_path / "task.safetensors").metadata
    built = build_task(base, plan_task(base, bundle))
    assert torch.equal(
        outputs(built, x), outputs(load_task(base, tmp_path / "task.safetensors"), x)
    )
