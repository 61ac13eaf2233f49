"""The configs shipped in configs/: all valid; the BERT and Llama ones stop with a clear message
(no weights here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spa.cli import main
from spa.experiments.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PAPER = sorted((CONFIGS / "paper").glob("*.toml"))


def test_paper_configs_cover_the_paper_grid() -> None:
    names = {path.stem for path in PAPER}
    for data in ("cifar10", "flowers102", "catsdogs"):
        for method in ("finepruning", "splora_r8", "splora_r32"):
            for criterion in ("weight", "gradient", "taylor", "lrp"):
                assert f"resnet50_{data}_{method}_{criterion}" in names
    for method in ("finepruning", "splopa"):
        for criterion in ("l0", "movement", "soft_movement"):
            assert f"bert_squad_{method}_{criterion}" in names


@pytest.mark.parametrize("path", [*sorted(CONFIGS.glob("*.toml")), *PAPER], ids=lambda p: p.stem)
def test_shipped_config_is_valid(path: Path) -> None:
    config = load_config(path)
    assert config.name == path.stem or path.stem == "demo"


def test_resnet_paper_config_uses_paper_schedule() -> None:
    config = load_config(CONFIGS / "paper" / "resnet50_cifar10_splora_r32_lrp.toml")
    assert config.adapter.config.rank == 32 and config.pruning.criterion == "lrp"
    assert config.pruning.density_steps()[0] == pytest.approx(0.95)
    assert config.pruning.density_steps()[-1] == pytest.approx(0.05)
    assert (config.train.momentum, config.train.weight_decay) == (0.9, 5e-4)


@pytest.mark.parametrize(
    "path", [p for p in PAPER if p.stem.startswith("bert")], ids=lambda p: p.stem
)
def test_bert_paper_config_without_weights_names_the_key(
    path: Path, tmp_path: Path, capsys
) -> None:
    assert main(["run", str(path), "--output", str(tmp_path / "run")]) == 1
    error = capsys.readouterr().err
    assert "config key 'model.path': weights/bert-base-uncased is not a local model" in error


def test_causal_lm_config_is_a_llama_splora_run_that_names_the_missing_model(
    tmp_path: Path, capsys
) -> None:
    path = CONFIGS / "causal_lm_llama.toml"
    config = load_config(path)
    assert (config.model.name, config.data.name, config.adapter.kind) == (
        "transformers",
        "text",
        "splora",
    )
    assert config.pruning.units == ("heads", "ffn")
    assert config.pruning.density_steps() == [0.9, 0.8, 0.7, 0.6, 0.5]
    assert main(["run", str(path), "--output", str(tmp_path / "run")]) == 1
    error = capsys.readouterr().err
    assert "config key 'model.path': weights/llama is not a local model directory" in error
