"""The `spa` command never shows a traceback: every failure is one `spa: error:` line, exit != 0.

Each test runs the real command in a subprocess (as a user would) and checks the exit code, that
stderr holds exactly one line starting with `spa: error:` with the expected content, and that no
"Traceback" appears anywhere.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

import spa
from spa.models import create_model
from spa.tasks import save_task

pytestmark = pytest.mark.slow  # every test starts a Python process that imports torch

_ROOT = Path(__file__).resolve().parents[2]

TINY_CONFIG = """
name = "tiny"
seeds = [0]

[model]
name = "tiny_convnet"
options = {width = 4}

[data]
name = "digits"
options = {task = "mod3", size = 8}
batch_size = 16

[adapter]
kind = "splora"
rank = 2

[pruning]
criterion = "weight"
densities = [0.5]

[train]
initial_epochs = 1
epochs_per_step = 1
max_batches_per_epoch = 1
lr = 0.05
"""


def spa_command(*args: str, debug: bool = False) -> subprocess.CompletedProcess:
    """Run `python -m spa ARGS` from this checkout and capture its output."""
    environment = {**os.environ, "PYTHONPATH": str(_ROOT), "OMP_NUM_THREADS": "1"}
    environment.pop("SPA_DEBUG", None)
    if debug:
        environment["SPA_DEBUG"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "spa", *map(str, args)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit code != 0, one `spa: error:` line on stderr holding every fragment, no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("spa: error:")]
    assert len(errors) == 1, result.stderr
    assert lines[-1] == errors[0]  # the error is the last word, not followed by anything
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_CONFIG, encoding="utf-8")
    return path


@pytest.fixture
def bundle_files(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny_convnet base (3 classes, 1 input channel) and a task bundle recording its options."""
    options = {"num_classes": 3, "width": 4}
    base = create_model("tiny_convnet", **options).eval()
    base_path = tmp_path / "base.safetensors"
    safetensors.torch.save_file(base.state_dict(), str(base_path))
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2))
    bundle_path = tmp_path / "task.safetensors"
    save_task(model, bundle_path, base_model=base, model_name="tiny_convnet", model_options=options)
    return base_path, bundle_path


def test_version_prints_the_package_version() -> None:
    result = spa_command("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"spa {spa.__version__}"


def test_run_with_a_directory_as_config(tmp_path: Path) -> None:
    assert_one_line_error(spa_command("run", tmp_path), str(tmp_path), "is a directory")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = spa_command("run", tmp_path, debug=True)
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_run_into_an_unwritable_output_directory(tmp_path: Path, config_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = spa_command("run", config_path, "--output", blocker / "run")
    assert_one_line_error(result, str(blocker), "Not a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_run_into_a_read_only_output_directory(tmp_path: Path, config_path: Path) -> None:
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o500)
    try:
        result = spa_command("run", config_path, "--output", read_only / "run")
    finally:
        read_only.chmod(0o700)
    assert_one_line_error(result, "Permission denied")


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.lr=inf", "'train.lr'"),
        ("train.lr=nan", "'train.lr'"),
        ("pruning.densities=[]", "'pruning.densities'"),
    ],
)
def test_run_refuses_nonsense_values(config_path: Path, override: str, key: str) -> None:
    assert_one_line_error(spa_command("run", config_path, "--set", override), key)


def test_run_stops_when_the_loss_becomes_non_finite(tmp_path: Path, config_path: Path) -> None:
    result = spa_command(
        "run", config_path, "--output", tmp_path / "run", "--set", "train.lr=1e30",
        "--set", "train.max_batches_per_epoch=4", "--set", "train.momentum=0",
    )  # fmt: skip
    assert_one_line_error(result, "the loss became", "at batch", "lower train.lr")


def test_refused_run_does_not_block_the_corrected_rerun(tmp_path: Path, config_path: Path) -> None:
    run_dir = tmp_path / "run"
    refused = spa_command("run", config_path, "--output", run_dir, "--set", "model.options.bogus=1")
    assert_one_line_error(refused, "bogus")
    corrected = spa_command("run", config_path, "--output", run_dir)
    assert corrected.returncode == 0, corrected.stderr
    assert (run_dir / "table.md").exists()


def test_report_refuses_the_same_run_twice(tmp_path: Path) -> None:
    metrics = tmp_path / "a" / "seed-0" / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    metrics.write_text('{"event": "density"}\n')
    result = spa_command("report", tmp_path / "a", tmp_path / "a", "--output", tmp_path / "out")
    assert_one_line_error(result, "the same run is given twice")


def test_bundle_info_on_files_that_are_not_bundles(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("some text that is long enough to have a header size field\n")
    checkpoint = tmp_path / "model.pt"
    torch.save({"w": torch.ones(3)}, checkpoint)
    for path in (text, checkpoint):
        assert_one_line_error(spa_command("bundle", "info", path), str(path), "not a spa bundle")


def test_bundle_verify_with_a_directory_that_is_not_a_transformers_model(
    tmp_path: Path, bundle_files: tuple[Path, Path]
) -> None:
    _, bundle_path = bundle_files
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    result = spa_command("bundle", "verify", bundle_path, "--base", folder)
    assert_one_line_error(result, str(folder))


def test_bundle_verify_keeps_recorded_arguments_when_model_is_named(
    bundle_files: tuple[Path, Path],
) -> None:
    base_path, bundle_path = bundle_files
    result = spa_command(
        "bundle", "verify", bundle_path, "--base", base_path, "--model", "tiny_convnet"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK:")


def test_bundle_verify_with_wrong_num_classes_suggests_no_missing_flag(
    bundle_files: tuple[Path, Path],
) -> None:
    base_path, bundle_path = bundle_files
    result = spa_command("bundle", "verify", bundle_path, "--base", base_path, "--num-classes", "5")
    line = assert_one_line_error(result, "--num-classes 5", "number of classes")
    assert "skip_head" not in line


def test_bundle_verify_lists_valid_builder_arguments(bundle_files: tuple[Path, Path]) -> None:
    import inspect

    from spa.models import MODELS

    base_path, bundle_path = bundle_files
    result = spa_command(
        "bundle", "verify", bundle_path, "--base", base_path, "--model-arg", "bogus=1"
    )
    line = assert_one_line_error(result, "no builder argument 'bogus'", "valid arguments:")
    valid = list(inspect.signature(MODELS.get("tiny_convnet")).parameters)
    assert line.endswith("valid arguments: " + ", ".join(valid))
    assert "invalid keyword arguments" not in line


def test_export_onnx_with_a_wrong_input_shape(tmp_path: Path, bundle_files) -> None:
    pytest.importorskip("onnx")
    base_path, bundle_path = bundle_files
    result = spa_command(
        "export", bundle_path, "--base", base_path, "-o", tmp_path / "task.onnx",
        "--format", "onnx", "--input-shape", "1,3,32,32",
    )  # fmt: skip
    assert_one_line_error(result, "--input-shape 1,3,32,32", "takes 1 input channels")
    assert not (tmp_path / "task.onnx").exists()


def test_export_onnx_takes_the_input_channels_from_the_bundle(tmp_path: Path, bundle_files) -> None:
    pytest.importorskip("onnx")
    base_path, bundle_path = bundle_files
    output = tmp_path / "task.onnx"
    result = spa_command(
        "export", bundle_path, "--base", base_path, "-o", output, "--format", "onnx"
    )
    assert result.returncode == 0, result.stderr
    import onnx

    graph = onnx.load(str(output)).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][1:] == [1, 32, 32]


LM_CONFIG = """
name = "tiny-lm"

[model]
name = "tiny_llama"

[model.options]
hidden_size = 16
num_layers = 1
num_heads = 2
num_key_value_heads = 1
intermediate_size = 32
max_positions = 16

[data]
name = "text"
options = {train_file = "train.txt", sequence_length = 8, byte_fallback = true}

[adapter]
kind = "splora"

[pruning]
densities = [0.5]
"""


def _bert_directory(path: Path) -> Path:
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=300, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32,
    )  # fmt: skip
    BertForMaskedLM(config).save_pretrained(path)
    return path


@pytest.mark.parametrize(
    ("case", "fragments"),
    [
        ("no tokenizer", ("'data.options.tokenizer'", "byte_fallback = true")),
        ("empty file", ("'data.options.train_file'", "is empty")),
        ("long sequence", ("'data.options.sequence_length'", "16 positions")),
        ("encoder", ("'model.path'", "not a causal (decoder-only) language model")),
    ],
)
def test_causal_lm_bad_input_is_one_line_naming_the_key(tmp_path: Path, case, fragments) -> None:
    (tmp_path / "train.txt").write_text("" if case == "empty file" else "some text\n" * 20)
    config = tmp_path / "lm.toml"
    config.write_text(LM_CONFIG, encoding="utf-8")
    overrides = {
        "no tokenizer": ["data.options.byte_fallback=false"],
        "empty file": [],
        "long sequence": ["data.options.sequence_length=17"],
        "encoder": ["model.name=transformers", f"model.path={_bert_directory(tmp_path / 'bert')}"],
    }[case]
    arguments = ["run", config, "--output", tmp_path / "run", "--set", f"data.root={tmp_path}"]
    for override in overrides:
        arguments += ["--set", override]
    assert_one_line_error(spa_command(*arguments), *fragments)
