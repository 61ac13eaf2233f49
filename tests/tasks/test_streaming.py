"""Streaming from sharded safetensors equals in-memory pruning (masks and logits)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers

import spa
from spa.errors import ConfigError
from spa.families.tiny import DECODER
from spa.pruning import apply_masks, channel_groups, compute_masks, score
from spa.tasks.shards import INDEX, ShardedCheckpoint, ShardWriter
from spa.tasks.streaming import prune_shards

VOCAB = DECODER["vocab_size"]


def _llama(layers: int = 3) -> transformers.LlamaForCausalLM:
    config = transformers.LlamaConfig(**{**DECODER, "num_hidden_layers": layers})
    return transformers.LlamaForCausalLM(config).eval()


def _data():
    return [torch.randint(1, VOCAB, (2, 7)) for _ in range(2)]


@pytest.fixture
def sharded(tmp_path):
    """A tiny Llama saved as several safetensors shards, and the model itself."""
    model = _llama()
    model.save_pretrained(tmp_path / "base", max_shard_size="20KB")
    assert (tmp_path / "base" / INDEX).is_file()
    return model, tmp_path / "base"


def _in_memory(base, criterion, density, data):
    model = spa.adapt(copy.deepcopy(base), spa.FinePruningConfig())
    groups = channel_groups(model, None, units=("heads", "ffn"))
    scores = score(model, criterion, groups, data, num_batches=None)
    masks = compute_masks(groups, scores, density=density, ranking="local")
    apply_masks(model, masks)
    return spa.fuse(spa.compact(model)), masks


@pytest.mark.parametrize("criterion", ["activation", "fluctuation", "weight"])
def test_prune_shards_equals_in_memory_pruning(sharded, tmp_path, criterion):
    base, source = sharded
    data = _data()
    expected, expected_masks = _in_memory(base, criterion, 0.5, data)
    report = prune_shards(
        source, tmp_path / "out", data, 0.5, criterion=criterion, max_shard_bytes=30_000
    )
    for name, entry in expected_masks.items():
        for key, mask in entry.items():
            assert torch.equal(report.masks[name][key], mask), (name, key)
    assert len(json.loads((tmp_path / "out" / INDEX).read_text())["weight_map"]) > 0
    assert len(set(ShardedCheckpoint(tmp_path / "out").files.values())) > 1
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert loaded.config.num_key_value_heads == 1 and loaded.config.num_attention_heads == 2
    assert loaded.config.intermediate_size == report.config["intermediate_size"] < 64
    ids = torch.randint(1, VOCAB, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, expected(ids).logits, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(loaded(ids).logits, base(ids).logits, atol=1e-3)
    assert set(report.seconds) >= {"open", "calibrate", "load", "score", "compact", "write"}


def test_prune_shards_refuses_a_criterion_that_needs_the_whole_model(sharded, tmp_path):
    with pytest.raises(ConfigError, match="'taylor' needs the whole model"):
        prune_shards(sharded[1], tmp_path / "out", _data(), 0.5, criterion="taylor")


def test_prune_shards_refuses_a_non_empty_destination(sharded, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        prune_shards(sharded[1], tmp_path / "out", _data(), 0.5)
    assert (tmp_path / "out" / "keep.txt").read_text() == "x"


def test_shard_writer_round_trips_through_the_index(tmp_path):
    tensors = {f"t{i}": torch.randn(10, 10) for i in range(5)}
    writer = ShardWriter(tmp_path, max_shard_bytes=900)
    writer.add(tensors)
    weight_map = writer.close()
    assert len(set(weight_map.values())) == 3  # 400 bytes each, two per shard
    loaded = ShardedCheckpoint(tmp_path).load(["t3", "t0"])
    assert torch.equal(loaded["t3"], tensors["t3"]) and torch.equal(loaded["t0"], tensors["t0"])
    with pytest.raises(ConfigError, match="no tensor 'missing'"):
        ShardedCheckpoint(tmp_path).load(["missing"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.int64])
def test_write_safetensors_reads_back_with_safetensors(tmp_path, dtype):
    import safetensors.torch

    from spa.tasks.shards import write_safetensors

    tensors = {
        "a": (torch.randn(3, 5) * 100).to(dtype),
        "b": torch.arange(7).to(dtype),
        "scalar": torch.tensor(2).to(dtype),
        "empty": torch.zeros(0, 4, dtype=dtype),
        "mask": torch.tensor([True, False, True]),
    }
    write_safetensors(tmp_path / "x.safetensors", tensors, {"format": "pt"})
    loaded = safetensors.torch.load_file(tmp_path / "x.safetensors")
    assert set(loaded) == set(tensors)
    for key, tensor in tensors.items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor), key
