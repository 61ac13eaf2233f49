"""The README runs as written: every Python block literally, every TOML block through the config
loader, and the bundle command lines on the demo's own bundles, so the documentation cannot rot.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

_ROOT = Path(__file__).resolve().parents[1]
README = (_ROOT / "README.md").read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    """The README's fenced code blocks of `language`, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.DOTALL | re.MULTILINE)


PYTHON = blocks("python")


def _block_id(block: str) -> str:
    first = next(
        line for line in block.splitlines() if line and not line.startswith(("import", "from"))
    )
    return re.sub(r"\W+", "_", first)[:40]


def test_readme_has_the_documented_python_blocks() -> None:
    assert len(PYTHON) >= 7  # library, pruning, blocks, bundles, own model / images / transformers


@pytest.mark.slow
@pytest.mark.parametrize("block", PYTHON, ids=[_block_id(b) for b in PYTHON])
def test_readme_python_block_runs_as_written(block: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # blocks write files (bundles, image folders) where they run
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    # Checks on what the blocks leave behind, against independent computations.
    if "base" in namespace and "model" in namespace and "SPLoRAConfig" in block:
        assert namespace["model"] is not namespace["base"], "the README adapts the base in place"
        assert not spa_layers(namespace["base"]), "the base must stay plain"
        assert "deepcopy(base)" not in block, "a task model shares the base's weights"
        assert_shares_frozen_weights(namespace["model"], namespace["base"])
    if "plan" in namespace:  # the large-model flow: the meta plan costs what compaction kept
        deployed, plan = namespace["deployed"], namespace["plan"]
        example = {"input_ids": torch.zeros(1, 128, dtype=torch.long)}
        assert __import__("spa").count_flops(deployed, example) == plan.kept_flops
        assert next(deployed.parameters()).dtype == torch.bfloat16
    if "host" in namespace:
        host, images = namespace["host"], namespace["images"]
        with torch.no_grad():
            expected = __import__("spa").load_task(host.base_model, "mod3.safetensors")(images)
            torch.testing.assert_close(namespace["logits"], expected)
        assert all(report.flops is not None for report in host.reports().values())
    if "fast" in namespace:
        with torch.no_grad():
            torch.testing.assert_close(
                namespace["fast"](namespace["example"]),
                namespace["model"].eval()(namespace["example"]),
                rtol=1e-4,
                atol=1e-5,
            )
    if "macs" in namespace:  # the compute budget: torch's counter on the compacted model
        assert 0.45 < namespace["kept"] <= 0.5
    if "callback" in namespace:  # the Trainer example: every density visited, bundle == model
        callback, model = namespace["callback"], namespace["model"].eval()
        assert [r.target for r in callback.history] == list(callback.schedule.densities)
        assert all(a.reached > b.reached for a, b in zip(callback.history, callback.history[1:]))
        with torch.no_grad():
            ids = namespace["example"]["input_ids"]
            torch.testing.assert_close(
                namespace["task"](input_ids=ids).logits,
                model(input_ids=ids).logits,
                rtol=1e-4,
                atol=1e-5,
            )


def assert_shares_frozen_weights(model: torch.nn.Module, base: torch.nn.Module) -> None:
    """Every frozen base weight the task model still holds at full size is the base's storage."""
    for name, layer in spa_layers(model):
        weight, original = layer.base.weight, base.get_submodule(name).weight
        if not weight.requires_grad and weight.shape == original.shape:  # not compacted
            assert weight.data_ptr() == original.data_ptr(), f"{name} copied the base weight"


def spa_layers(model: torch.nn.Module) -> list:
    """The spa adapter layers inside `model`."""
    import spa

    return list(spa.adapter_layers(model))


def test_readme_toml_blocks_are_valid_configs(tmp_path: Path) -> None:
    from spa.experiments.config import load_config

    tomls = blocks("toml")
    assert tomls
    for index, text in enumerate(tomls):
        path = tmp_path / f"{index}.toml"
        path.write_text(text, encoding="utf-8")
        load_config(path)


@pytest.mark.slow
def test_readme_bundle_commands_run_on_the_demo_bundles(quick_demo, tmp_path: Path) -> None:
    """The README's `spa bundle` / `spa export` lines (signing included), on `spa demo
    --quick`'s files.

    The full demo's paths map onto the quick demo's: `runs/` -> `runs-quick/`, `source/` ->
    `source-quick/` and the 10% step of five densities -> the 10% step of two.
    """
    commands = "\n".join(b for b in blocks("bash") if "spa bundle verify" in b)
    demo = str(quick_demo.output_dir)
    commands = (
        commands.replace("spa-demo-output/runs/", f"{demo}/runs-quick/")
        .replace("spa-demo-output/source/", f"{demo}/source-quick/")
        .replace("step-05-density-0.100", "step-02-density-0.100")
    )
    assert "spa-demo-output" not in commands
    script = f'spa() {{ "{sys.executable}" -m spa "$@"; }}\nset -e\n{commands}'
    environment = {**os.environ, "PYTHONPATH": str(_ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "OK:" in result.stdout
    assert (tmp_path / "parity.safetensors").stat().st_size > 0
    assert (tmp_path / "parity.onnx").stat().st_size > 0
    assert (tmp_path / "signer.pem.pub").is_file() and "signed by" in result.stdout


def test_readme_bundle_path_is_the_full_demo_lowest_density_step() -> None:
    from spa.experiments.demo import FULL

    assert "spa-demo-output/source/model.pt" in README
    assert f"step-{len(FULL.densities):02d}-density-{min(FULL.densities):.3f}" in README
