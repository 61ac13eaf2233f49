"""`spa export BUNDLE --base DIR --format transformers -o OUT` as a user runs it."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from spa.deploy import compacted
from spa.models.tiny_lm import tiny_llama
from spa.tasks import load_task, save_task
from tests.cli.test_errors import assert_one_line_error, spa_command
from tests.families.test_pretrained import pruned

pytestmark = pytest.mark.slow  # every test starts a Python process that imports torch


def test_export_transformers_writes_a_directory_and_refuses_to_overwrite_it(tmp_path):
    base = tiny_llama().eval()
    base.save_pretrained(tmp_path / "base")
    save_task(compacted(pruned(base)), tmp_path / "task.safetensors", base_model=base)
    arguments = ["export", tmp_path / "task.safetensors", "--base", tmp_path / "base"]
    arguments += ["--format", "transformers", "-o", tmp_path / "out"]

    result = spa_command(*arguments)
    assert result.returncode == 0, result.stderr
    assert "transformers directory" in result.stdout
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["num_attention_heads"], config["intermediate_size"]) == (2, 64)
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, 256, (2, 6))
    with torch.no_grad():
        expected = load_task(base, tmp_path / "task.safetensors")(ids).logits
        torch.testing.assert_close(exported(ids).logits, expected, rtol=1e-5, atol=1e-5)

    again = spa_command(*arguments)  # bad input: the directory exists now
    assert_one_line_error(again, "out exists and is not empty", "--overwrite")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["config.json", "generation_config.json", "model.safetensors"]
    )


def test_export_transformers_of_a_pruned_hidden_size(tmp_path):
    base = tiny_llama().eval()
    base.save_pretrained(tmp_path / "base")
    odd = pruned(base, units=("hidden",), density=0.65)  # 41 of 64: not a multiple of 4 heads
    save_task(compacted(odd), tmp_path / "odd.safetensors", base_model=base)
    arguments = ["export", tmp_path / "odd.safetensors", "--base", tmp_path / "base"]
    refused = spa_command(*arguments, "--format", "transformers", "-o", tmp_path / "odd")
    assert_one_line_error(refused, "LlamaConfig refuses", "round_to={'hidden': heads}")
    assert not (tmp_path / "odd").exists()

    model = pruned(base, units=("heads", "ffn", "hidden"), round_to={"hidden": 4})
    kept = int(model.model.norm.spa_out_mask.sum())
    save_task(compacted(model), tmp_path / "task.safetensors", base_model=base)
    arguments = ["export", tmp_path / "task.safetensors", "--base", tmp_path / "base"]
    result = spa_command(*arguments, "--format", "transformers", "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["hidden_size"] == kept < 64
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, 256, (2, 6))
    with torch.no_grad():
        expected = load_task(base, tmp_path / "task.safetensors")(ids).logits
        torch.testing.assert_close(exported(ids).logits, expected, rtol=1e-5, atol=1e-5)


def test_export_remove_empty_units_drops_neurons_block_pruning_emptied(tmp_path):
    import copy

    import spa

    base = tiny_llama().eval()  # FFN 128 neurons, down_proj 64 x 128
    base.save_pretrained(tmp_path / "base")
    model = spa.adapt(copy.deepcopy(base), spa.BlockFinePruningConfig(block_shape=(16, 16)))
    with torch.no_grad():
        for layer in model.model.layers:  # the first 16 neurons' down columns, in every layer
            layer.mlp.down_proj.block_mask[:, 0] = False
    save_task(compacted(model), tmp_path / "task.safetensors", base_model=base)
    arguments = ["export", tmp_path / "task.safetensors", "--base", tmp_path / "base"]
    arguments += ["--format", "transformers"]
    kept = spa_command(*arguments, "-o", tmp_path / "kept")
    removed = spa_command(*arguments, "--remove-empty-units", "-o", tmp_path / "removed")
    assert kept.returncode == 0 and removed.returncode == 0, kept.stderr + removed.stderr
    sizes = [
        json.loads((tmp_path / name / "config.json").read_text())["intermediate_size"]
        for name in ("kept", "removed")
    ]
    assert sizes == [128, 112]
    ids = torch.randint(0, 256, (2, 6))
    with torch.no_grad():
        expected = load_task(base, tmp_path / "task.safetensors")(ids).logits
        for name in ("kept", "removed"):
            exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / name).eval()
            torch.testing.assert_close(exported(ids).logits, expected, rtol=1e-5, atol=1e-5)


def test_export_onnx_of_a_pruned_decoder_runs_in_onnxruntime_at_any_batch_and_length(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    base = tiny_llama().eval()
    base.save_pretrained(tmp_path / "base")
    model = pruned(base, units=("heads", "ffn", "hidden"))
    save_task(compacted(model), tmp_path / "task.safetensors", base_model=base)
    arguments = ["export", tmp_path / "task.safetensors", "--base", tmp_path / "base"]
    result = spa_command(*arguments, "--format", "onnx", "-o", tmp_path / "task.onnx")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("wrote") and "INFO" not in result.stderr
    session = onnxruntime.InferenceSession(
        str(tmp_path / "task.onnx"), providers=["CPUExecutionProvider"]
    )
    task = load_task(base, tmp_path / "task.safetensors")
    for shape in ((3, 7), (1, 20)):  # neither the traced batch nor the traced length
        ids = torch.randint(0, 256, shape)
        (logits,) = session.run(None, {"input": ids.numpy()})
        with torch.no_grad():
            expected = task(ids).logits
        torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=1e-4, atol=1e-5)
