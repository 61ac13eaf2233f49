"""Dispatch of configs to task types and the step plan of each pruning schedule."""

from __future__ import annotations

import pytest

from spa.adapters import ADAPTER_KINDS
from spa.errors import ConfigError
from spa.experiments.config import from_dict
from spa.experiments.task_types import (
    TASK_TYPES,
    not_supported,
    plan_steps,
    task_type_for,
    unsupported_reason,
)


def _config(**sections):
    data = {"data": {"name": "digits"}, **sections}
    return from_dict(data)


def test_builtin_task_types_are_registered() -> None:
    assert {"classification", "extractive-qa"} <= set(TASK_TYPES.names())
    assert TASK_TYPES.get("classification").metric_name == "accuracy"
    assert TASK_TYPES.get("extractive-qa").metric_name == "f1"


@pytest.mark.parametrize(
    ("data_name", "task_type"),
    [
        ("digits", "classification"),
        ("cifar10", "classification"),
        ("image_folder", "classification"),
        ("squad", "extractive-qa"),
    ],
)
def test_data_name_picks_the_task_type(data_name: str, task_type: str) -> None:
    assert task_type_for(_config(data={"name": data_name})).name == task_type


def test_unknown_data_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"'data\.name': unknown dataset 'mnist'; known: .*squad"):
        task_type_for(_config(data={"name": "mnist"}))


def test_iterative_plan_has_an_unpruned_step_then_one_per_density() -> None:
    config = _config(
        pruning={"densities": [0.6, 0.3]},
        train={"initial_epochs": 3, "epochs_per_step": 2},
    )
    steps = [(s.index, s.target_density, s.epochs, s.first_epoch) for s in plan_steps(config)]
    # epochs 0-2 unpruned, 3-4 at 0.6, 5-6 at 0.3
    assert steps == [(0, 1.0, 3, 0), (1, 0.6, 2, 3), (2, 0.3, 2, 5)]


def test_no_pruning_plan_is_one_unpruned_step() -> None:
    config = _config(adapter={"kind": "lora"}, pruning={"schedule": "none"})
    steps = plan_steps(config)
    assert [(s.index, s.target_density) for s in steps] == [(0, 1.0)]


def test_gradual_plan_is_one_step_over_all_epochs() -> None:
    config = _config(
        adapter={"kind": "splopa"},
        pruning={"schedule": "gradual", "criterion": "movement", "target_density": 0.4},
        train={"initial_epochs": 1, "epochs_per_step": 4},
    )
    steps = [(s.index, s.target_density, s.epochs, s.first_epoch) for s in plan_steps(config)]
    assert steps == [(1, 0.4, 5, 0)]


def test_classification_refuses_block_kinds_naming_the_key_and_the_channel_kinds() -> None:
    classification = TASK_TYPES.get("classification")
    reason = unsupported_reason(
        classification, _config(adapter={"kind": "splopa"}, pruning={"criterion": "magnitude"})
    )
    channel = [n for n in ADAPTER_KINDS.names() if ADAPTER_KINDS.get(n).pruning == "channel"]
    assert reason.startswith("config key 'adapter.kind' = 'splopa': not supported for image models")
    assert all(repr(name) in reason for name in [*channel, "lora"])
    assert unsupported_reason(classification, _config()) is None


@pytest.mark.parametrize("name", TASK_TYPES.names())
def test_every_refused_schedule_is_worded_by_not_supported(name: str) -> None:
    task_type = TASK_TYPES.get(name)
    capabilities = task_type.capabilities
    schedule = next(s for s in ("iterative", "gradual", "none") if s not in capabilities.schedules)
    kind = next(
        n for n in ADAPTER_KINDS.names() if ADAPTER_KINDS.get(n).pruning in capabilities.pruning
    )
    criterion = {"channel": "weight", "block": "magnitude"}[ADAPTER_KINDS.get(kind).pruning]
    config = _config(
        data={"name": task_type.data_names()[0]},
        adapter={"kind": kind},
        pruning={"schedule": schedule, "criterion": criterion},
    )
    expected = not_supported(
        "pruning.schedule", schedule, capabilities.models, capabilities.schedules
    )
    assert unsupported_reason(task_type, config) == expected
