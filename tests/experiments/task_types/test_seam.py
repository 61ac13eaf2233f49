"""The task-type seam: a task type defined only in this test registers once and runs through
the unchanged runner (steps, records, bundles, resume, tables)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from torch import nn

from spa.experiments.config import ExperimentConfig, from_dict
from spa.experiments.measure import measure_latency
from spa.experiments.runner import run
from spa.experiments.task_types import (
    TASK_TYPES,
    Capabilities,
    Evaluation,
    Step,
    task_type_for,
)

FEATURES = 4


def _data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(64, FEATURES, generator=generator)
    targets = inputs @ torch.tensor([[3.0], [-2.0], [0.5], [0.1]]) + 1.0
    return inputs, targets


def _r2(prediction: torch.Tensor, targets: torch.Tensor) -> float:
    residual = float(((prediction - targets) ** 2).sum())
    return 1.0 - residual / float(((targets - targets.mean()) ** 2).sum())


@dataclass
class ToySession:
    """Linear regression whose weight is magnitude-pruned to each step's density."""

    config: ExperimentConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    mask: torch.Tensor

    def prune(self, step: Step) -> None:
        kept = round(step.target_density * FEATURES)
        order = self.model.weight.detach().abs().flatten().argsort(descending=True)
        self.mask = torch.zeros(FEATURES, dtype=torch.bool)
        self.mask[order[:kept]] = True

    def _masked(self, inputs: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(inputs, self.model.weight * self.mask, self.model.bias)

    def train_epoch(self, step: Step, epoch: int) -> dict[str, Any]:
        inputs, targets = _data(0)
        inputs = inputs + 0.01 * torch.randn_like(inputs)  # draws from the global generator
        self.optimizer.zero_grad()
        loss = nn.functional.mse_loss(self._masked(inputs), targets)
        loss.backward()
        self.optimizer.step()
        return {"lr": self.config.train.lr, "loss": float(loss.detach())}

    def finish_training(self, step: Step) -> None:
        pass

    def evaluate(self) -> Evaluation:
        inputs, targets = _data(1)
        with torch.no_grad():
            return Evaluation(metric=_r2(self._masked(inputs), targets))

    def deploy(self, bundle_path: Path) -> dict[str, Any]:
        weight = (self.model.weight * self.mask).detach().contiguous()
        tensors = {"weight": weight, "bias": self.model.bias.detach().clone()}
        bundle_path.parent.mkdir(parents=True, exist_ok=True)
        safetensors.torch.save_file(tensors, str(bundle_path))
        kept = int(self.mask.sum())
        return {
            "density": kept / FEATURES,
            "dparams": kept + 1,
            "params": kept + 1,
            "flops": 2 * kept,
            "macs": kept,
            **measure_latency(self.model, torch.zeros(1, FEATURES), repeats=3).record(),
            "bundle_bytes": bundle_path.stat().st_size,
        }

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "mask": self.mask,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.mask = state["mask"]


class ToyRegression:
    name = "toy-regression"
    metric_name = "r2"
    supports_distributed = False
    capabilities = Capabilities(models="toy lines", pruning=("channel",), schedules=("iterative",))

    def data_names(self) -> tuple[str, ...]:
        return ("toy_lines",)

    def config_problem(self, config: ExperimentConfig) -> str | None:
        return None

    def start(self, config: ExperimentConfig, seed: int) -> ToySession:
        model = nn.Linear(FEATURES, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=config.train.lr)
        return ToySession(config, model, optimizer, torch.ones(FEATURES, dtype=torch.bool))


if "toy-regression" not in TASK_TYPES:  # the one registration a new task type needs
    TASK_TYPES.register("toy-regression")(ToyRegression())


def _config(output: Path) -> ExperimentConfig:
    return from_dict(
        {
            "name": "toy",
            "output_dir": str(output),
            "data": {"name": "toy_lines"},
            "adapter": {"kind": "fine_pruning"},
            "pruning": {"criterion": "weight", "densities": [0.5, 0.25]},
            "train": {"initial_epochs": 3, "epochs_per_step": 2, "lr": 0.1},
        }
    )


def _comparable(records) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("latency_")} for r in records]


def test_dispatch_picks_the_test_task_type() -> None:
    assert task_type_for(_config(Path("unused"))).name == "toy-regression"


@pytest.mark.slow
def test_runner_runs_a_task_type_registered_in_a_test(tmp_path: Path) -> None:
    result = run(_config(tmp_path), tmp_path)
    assert [r["target_density"] for r in result.records] == [1.0, 0.5, 0.25]
    epochs = [
        (r["step"], r["epoch"])
        for r in map(json.loads, (tmp_path / "seed-0" / "metrics.jsonl").read_text().splitlines())
        if r["event"] == "epoch"
    ]
    assert epochs == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1)]
    inputs, targets = _data(1)
    for record in result.records:
        assert record["metric_name"] == "r2" and "accuracy" not in record
        assert record["density"] == record["target_density"]
        tensors = safetensors.torch.load_file(str(tmp_path / "seed-0" / record["bundle"]))
        assert int((tensors["weight"] != 0).sum()) == round(record["target_density"] * FEATURES)
        expected = _r2(inputs @ tensors["weight"].T + tensors["bias"], targets)
        assert math.isclose(record["metric"], expected, rel_tol=1e-5, abs_tol=1e-6)
    table = result.report.markdown.read_text()
    assert "| toy_lines | Fine-pruning | weight | 25.0 |" in table and "| r2 |" in table


class Interrupted(Exception):
    """Raised by a step hook to simulate a kill after a checkpoint."""


@pytest.mark.slow
def test_test_task_type_resumes_like_an_uninterrupted_run(tmp_path: Path) -> None:
    reference = run(_config(tmp_path / "reference"), tmp_path / "reference")

    def interrupt(seed: int, step: int, record: dict) -> None:
        if step == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        run(_config(tmp_path / "resumed"), tmp_path / "resumed", step_hook=interrupt)
    seen: list[int] = []
    resumed = run(
        _config(tmp_path / "resumed"),
        tmp_path / "resumed",
        step_hook=lambda seed, step, record: seen.append(step),
    )
    assert seen == [2]
    assert _comparable(resumed.records) == _comparable(reference.records)
