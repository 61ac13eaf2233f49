"""`spa prune-shards`: a sharded directory in, a smaller transformers directory out."""

from __future__ import annotations

import transformers

from spa.cli import main
from tests.tasks.test_streaming import _llama


def test_prune_shards_cli_writes_a_loadable_smaller_model(tmp_path, capsys):
    _llama(layers=2).save_pretrained(tmp_path / "base", max_shard_size="20KB")
    out = tmp_path / "out"
    argv = ["prune-shards", str(tmp_path / "base"), "-o", str(out), "--density", "0.5"]
    assert main([*argv, "--random-tokens", "--tokens", "8"]) == 0
    assert "2 blocks" in capsys.readouterr().out
    config = transformers.AutoConfig.from_pretrained(out)
    assert config.num_key_value_heads == 1 and config.intermediate_size < 64
    assert transformers.AutoModelForCausalLM.from_pretrained(out).num_parameters() > 0


def test_prune_shards_cli_refuses_a_directory_without_weights(tmp_path, capsys):
    _llama(layers=1).config.save_pretrained(tmp_path / "base")
    argv = ["prune-shards", str(tmp_path / "base"), "-o", str(tmp_path / "out")]
    assert main([*argv, "--density", "0.5", "--random-tokens"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("spa: error:") and "model.safetensors" in error
    assert "Traceback" not in error and not (tmp_path / "out").exists()
