"""Bundle layer codecs: per-kind dispatch, entries without a kind, the generic codec's checks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import spa
from spa.errors import BundleError
from spa.tasks import build_task, plan_task, read_bundle
from spa.tasks.codecs import GENERIC_CODEC, codec_for
from tests.tasks import delta_kind


def _block_task(tmp_path):
    base = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    model = spa.adapt(copy.deepcopy(base), spa.BlockFinePruningConfig(block_shape=(2, 2)))
    with torch.no_grad():
        model[0].base.weight.add_(torch.randn(4, 4))
        model[0].block_mask.copy_(torch.tensor([[True, False], [False, True]]))
    path = tmp_path / "task.safetensors"
    spa.save_task(spa.compacted(model), path, base_model=base)
    return base, model, path


def test_codec_for_uses_registered_codecs_then_the_generic_one():
    assert codec_for("splopa") is spa.ADAPTER_KINDS.get("splopa").codec is not None
    assert codec_for("block_fine_pruning") is GENERIC_CODEC


def test_entries_without_a_kind_load_as_splora(tmp_path):
    base = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2)).eval()
    with torch.no_grad():
        model[0].up.add_(1.0)
    path = tmp_path / "task.safetensors"
    spa.save_task(spa.compacted(model), path, base_model=base)
    bundle = read_bundle(path)
    for entry in bundle.metadata["layers"]:
        assert entry.pop("kind") == "splora"  # as bundles written before kinds were recorded
    task = build_task(base, plan_task(base, bundle))
    x = torch.randn(3, 4)
    torch.testing.assert_close(task(x), model(x), rtol=1e-6, atol=1e-6)


def test_generic_codec_round_trip_of_block_fine_pruning(tmp_path):
    base, model, path = _block_task(tmp_path)
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.equal(spa.load_task(base, path)(x), model.eval()(x))


def test_generic_codec_refuses_a_tensor_of_another_shape(tmp_path):
    base, _, path = _block_task(tmp_path)
    bundle = read_bundle(path)
    name = "layers.0.state.base.weight"
    bundle.tensors[name] = torch.zeros(4, 2)
    with pytest.raises(BundleError, match=r"layer '0': tensor 'base.weight' is .* \(4, 2\)"):
        plan_task(base, bundle)


def test_generic_codec_refuses_an_unknown_kind(tmp_path):
    base, _, path = _block_task(tmp_path)
    bundle = read_bundle(path)
    bundle.metadata["layers"][0]["kind"] = "no_such_kind"
    with pytest.raises(BundleError, match="unknown adapter kind 'no_such_kind'"):
        plan_task(base, bundle)


def test_a_kind_registered_codec_is_what_the_writer_and_loader_use(tmp_path, monkeypatch):
    monkeypatch.setitem(spa.ADAPTER_KINDS._items, delta_kind.DELTA_KIND, delta_kind.DELTA)
    base = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)).eval()
    model = spa.adapt(copy.deepcopy(base), delta_kind.DeltaConfig()).eval()
    with torch.no_grad():
        model[0].delta.normal_()
        model[2].weight.add_(1.0)  # the head trains
    path = tmp_path / "task.safetensors"
    delta_kind.calls.clear()
    spa.save_task(model, path, base_model=base)
    names = set(read_bundle(path).tensors)
    assert {"layers.0.positive", "layers.0.negative"} <= names  # the kind's own layout
    loaded = spa.load_task(base, path)
    assert delta_kind.calls == ["save", "plan"]
    expected = base[0].weight + model[0].delta  # W_s + Delta, independently
    assert torch.equal(loaded[0].weight, expected.detach())
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
