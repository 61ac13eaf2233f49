"""Base tensors only narrowed by hidden-size pruning are stored as their kept indices, and a
bundle whose indices were altered is refused naming the tensor."""

from __future__ import annotations

import copy

import pytest
import torch

import spa
from spa.codec.records import narrowing
from spa.deploy import compacted
from spa.errors import BundleError
from spa.models.tiny_lm import tiny_llama
from spa.tasks import load_task, save_task
from tests.families.test_pretrained import pruned
from tests.tasks.test_validation import _rewrite

EMBEDDING = "model.embed_tokens"


def test_narrowing_finds_the_kept_slices_or_nothing():
    base = torch.randn(6, 5)
    kept = torch.tensor([0, 2, 3])
    axis, found = narrowing(base[:, kept].clone(), base)
    assert axis == 1 and torch.equal(found, kept)
    axis, found = narrowing(base[kept[1:]].clone(), base)
    assert axis == 0 and torch.equal(found, kept[1:])
    changed = base[:, kept].clone()
    changed[0, 0] += 1  # a trained value: not a narrowing
    assert narrowing(changed, base) is None
    assert narrowing(base[:3, :3].clone(), base) is None  # two axes
    assert narrowing(base[:, [2, 0]].clone(), base) is None  # reordered
    assert narrowing(base[0, :3].clone(), base[0]) is None  # a vector: stored as it is


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    base = tiny_llama().eval()
    model = pruned(base, units=("hidden",), density=0.6)
    path = tmp_path / "task.safetensors"
    bundle = save_task(compacted(model), path, base_model=base)
    ids = torch.randint(0, 256, (2, 5))
    with torch.no_grad():
        expected = model(ids).logits
    kept = int(model.model.norm.spa_out_mask.sum())  # hidden channels the masks keep
    return base, path, bundle, ids, expected, kept


def test_a_hidden_pruned_bundle_stores_kept_indices_of_the_embedding(saved):
    base, path, bundle, ids, expected, kept = saved
    assert kept < base.model.norm.weight.numel()
    entry = next(e for e in bundle.metadata["modules"] if e["path"] == EMBEDDING)
    assert entry["narrowed"] == {"weight": ["parameter", 1]} and "tensors" not in entry
    indices = bundle.tensors[f"modules.{EMBEDDING}.weight"]
    assert indices.dtype == torch.int64 and indices.shape == (kept,)
    loaded = load_task(base, path)
    torch.testing.assert_close(
        loaded.model.embed_tokens.weight, base.model.embed_tokens.weight[:, indices]
    )
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, expected, rtol=1e-5, atol=1e-6)


def _indices(edit):
    def apply(bundle):
        key = f"modules.{EMBEDDING}.weight"
        bundle.tensors[key] = edit(bundle.tensors[key].clone())

    return apply


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_indices(lambda t: t.flip(0)), "must increase strictly"),
        (_indices(lambda t: t + 64), "must increase strictly"),
        (_indices(lambda t: t - t[0] - 1), "must increase strictly"),
        (_indices(lambda t: t.float()), "stored as torch.float32, expected torch.int64"),
        (_indices(lambda t: t[:0]), "must increase strictly"),
    ],
    ids=["reversed", "out-of-range", "negative", "float", "empty"],
)
def test_altered_kept_indices_are_refused_naming_the_tensor(saved, edit, message):
    base, path, *_ = saved
    _rewrite(path, edit)
    with pytest.raises(BundleError, match=message):
        load_task(base, path)


@pytest.mark.parametrize(
    "record",
    [["parameter", 2], ["parameter", -1], ["buffer", 1], ["parameter", True], "weight"],
)
def test_a_bad_narrowed_record_is_refused(saved, record):
    base, path, *_ = saved

    def edit(bundle):
        entry = next(e for e in bundle.metadata["modules"] if e["path"] == EMBEDDING)
        entry["narrowed"]["weight"] = record

    _rewrite(path, edit)
    with pytest.raises(BundleError, match="bad narrowed tensor record"):
        load_task(base, path)


def test_a_tensor_both_narrowed_and_stored_is_refused(saved):
    base, path, *_ = saved

    def edit(bundle):
        entry = next(e for e in bundle.metadata["modules"] if e["path"] == EMBEDDING)
        entry["tensors"] = {"weight": ["parameter", "float32"]}

    _rewrite(path, edit)
    with pytest.raises(BundleError, match="recorded twice"):
        load_task(base, path)


def test_host_switches_to_the_narrowed_task(saved):
    base, path, _, ids, expected, _ = saved
    host = spa.TaskHost(base)
    host.add_task("task", path)
    with torch.no_grad():
        torch.testing.assert_close(host.model("task")(ids).logits, expected, rtol=1e-5, atol=1e-6)


def test_a_tied_head_and_embedding_stay_one_tensor_when_loaded(tmp_path):
    from spa.pruning import apply_masks, channel_groups, compute_masks, score

    torch.manual_seed(0)
    base = tiny_llama().eval()
    assert base.lm_head.weight is base.model.embed_tokens.weight
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2, trainable=("norm",)))
    groups = channel_groups(model, None, units=("hidden",))
    apply_masks(model, compute_masks(groups, score(model, "weight", groups), 0.6))
    path = tmp_path / "task.safetensors"
    bundle = save_task(compacted(model), path, base_model=base)
    narrowed = {e["path"] for e in bundle.metadata["modules"] if "narrowed" in e}
    assert {"lm_head", EMBEDDING} <= narrowed  # frozen and tied: both are kept indices
    host = spa.TaskHost(base)
    host.add_task("task", path)
    for loaded in (load_task(base, path), host.model("task")):
        head, table = loaded.lm_head.weight, loaded.model.embed_tokens.weight
        assert head.shape == table.shape and head.shape[1] < 64
        assert head.data_ptr() == table.data_ptr()  # one tensor in memory, as in the base
