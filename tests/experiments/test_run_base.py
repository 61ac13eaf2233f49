"""A run from a random base saves that base, and its bundles verify against the saved file."""

from __future__ import annotations

import pytest
import torch

from spa.cli import main
from spa.experiments.config import from_dict
from spa.experiments.run_base import BASE_FILE
from spa.experiments.runner import run

from .test_runner import _config


@pytest.mark.slow
def test_bundles_of_a_random_base_run_verify_against_the_saved_base(tmp_path, capsys):
    data = _config(tmp_path, pruning={"densities": [0.5]})
    data["train"] = {**data["train"], "epochs_per_step": 1}
    result = run(from_dict(data), tmp_path)
    base_file = result.run_dir / "seed-0" / BASE_FILE
    bundle = next((result.run_dir / "seed-0").glob("step-01-*/task.safetensors"))
    assert main(["bundle", "verify", str(bundle), "--base", str(base_file)]) == 0
    assert "fits base" in capsys.readouterr().out
    state = torch.load(base_file, weights_only=True)
    assert set(state) and all(isinstance(v, torch.Tensor) for v in state.values())


def test_a_base_named_by_the_config_is_referenced_not_copied(tmp_path):
    from types import SimpleNamespace

    from spa.experiments.run_base import keep_base

    config = from_dict({**_config(tmp_path), "model": {"name": "tiny_convnet", "weights": "w.pt"}})
    session = SimpleNamespace(base=torch.nn.Linear(2, 2))
    assert keep_base(config, session, tmp_path) is None and not (tmp_path / BASE_FILE).exists()
