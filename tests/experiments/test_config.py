"""Tests for experiment configs: validation, overrides, TOML round trip."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from spa.errors import ConfigError
from spa.experiments.config import (
    ExperimentConfig,
    PruningConfig,
    config_to_toml,
    from_dict,
    load_config,
    set_override,
    to_dict,
)
from spa.experiments.toml_writer import dumps_toml


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_from_dict_builds_nested_sections() -> None:
    config = from_dict(
        {
            "name": "x",
            "seeds": [1, 2],
            "model": {"name": "tiny_convnet", "options": {"width": 4}},
            "adapter": {"kind": "splora", "rank": 16},
            "pruning": {"densities": [0.5, 0.1]},
            "train": {"lr": 1},
        }
    )
    assert config.seeds == (1, 2)
    assert config.model.options == {"width": 4}
    assert config.adapter.config.rank == 16
    assert config.pruning.densities == (0.5, 0.1)
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)


def test_from_dict_rejects_unknown_key_with_dotted_path() -> None:
    with pytest.raises(ConfigError, match=r"'train\.learning_rate': unknown key; allowed .*lr"):
        from_dict({"train": {"learning_rate": 0.1}})


def test_from_dict_rejects_unknown_top_level_key() -> None:
    with pytest.raises(ConfigError, match=r"'modle': unknown key"):
        from_dict({"modle": {}})


def test_from_dict_names_allowed_values_of_a_choice() -> None:
    with pytest.raises(ConfigError, match=r"'adapter\.kind': unknown 'prune'; kinds: .*splora"):
        from_dict({"adapter": {"kind": "prune"}})
    with pytest.raises(ConfigError, match=r"'adapter\.method'.*'fine-pruning', 'splora', 'lora'"):
        from_dict({"adapter": {"method": "prune"}})


def test_from_dict_rejects_wrong_type() -> None:
    with pytest.raises(ConfigError, match=r"'train\.initial_epochs': must be an integer"):
        from_dict({"train": {"initial_epochs": "3"}})


def test_from_dict_rejects_bool_for_number() -> None:
    with pytest.raises(ConfigError, match=r"'train\.lr': must be a number"):
        from_dict({"train": {"lr": True}})


def test_from_dict_rejects_out_of_range_value() -> None:
    with pytest.raises(ConfigError, match=r"'pruning\.target_density': must be in \(0\.0, 1\.0\]"):
        from_dict({"pruning": {"target_density": 1.5}})


def test_from_dict_rejects_increasing_densities() -> None:
    with pytest.raises(ConfigError, match=r"'pruning\.densities': must decrease"):
        from_dict({"pruning": {"densities": [0.1, 0.5]}})


def test_from_dict_rejects_unknown_criterion() -> None:
    with pytest.raises(ConfigError, match=r"'pruning\.criterion': unknown 'l1'; allowed"):
        from_dict({"pruning": {"criterion": "l1"}})


def test_criterion_names_come_from_the_registries(monkeypatch) -> None:
    from spa.pruning.block_criteria import BLOCK_CRITERIA
    from spa.pruning.criteria import CRITERIA

    with pytest.raises(ConfigError) as error:
        from_dict({"pruning": {"criterion": "l1"}})
    for name in CRITERIA.names() + BLOCK_CRITERIA.names():
        assert repr(name) in str(error.value)
    monkeypatch.setitem(CRITERIA._items, "l1", CRITERIA.get("weight"))  # a new criterion
    assert from_dict({"pruning": {"criterion": "l1"}}).pruning.criterion == "l1"
    with pytest.raises(ConfigError, match=r"'l1' does not fit adapter\.kind = 'splopa'"):
        from_dict({"adapter": {"kind": "splopa"}, "pruning": {"criterion": "l1"}})


def test_from_dict_rejects_block_criterion_for_channel_kind() -> None:
    with pytest.raises(ConfigError, match=r"'pruning\.criterion'.*'movement'.*'splora'"):
        from_dict({"adapter": {"kind": "splora"}, "pruning": {"criterion": "movement"}})


def test_from_dict_rejects_lora_with_pruning() -> None:
    with pytest.raises(ConfigError, match=r"'pruning\.schedule'.*lora"):
        from_dict({"adapter": {"kind": "lora"}})


def test_from_dict_requires_path_for_transformers() -> None:
    with pytest.raises(ConfigError, match=r"'model\.path': is required"):
        from_dict({"model": {"name": "transformers"}})


def test_from_dict_rejects_duplicate_seeds() -> None:
    with pytest.raises(ConfigError, match=r"'seeds'"):
        from_dict({"seeds": [0, 0]})


def test_from_dict_accepts_version_stamp() -> None:
    assert from_dict({"spa_version": "0.0.1"}) == ExperimentConfig()


def test_density_steps_iterative_default_reaches_target() -> None:
    steps = PruningConfig(step=0.2, target_density=0.3).density_steps()
    assert steps == pytest.approx([0.8, 0.6, 0.4, 0.3])


def test_density_steps_explicit_skips_unpruned() -> None:
    assert PruningConfig(densities=(1.0, 0.5, 0.1)).density_steps() == [0.5, 0.1]


def test_density_steps_none_schedule_is_empty() -> None:
    assert PruningConfig(schedule="none").density_steps() == []


def test_set_override_parses_toml_values() -> None:
    data: dict = {"train": {"lr": 0.1}}
    set_override(data, "train.lr=0.5")
    set_override(data, "seeds=[3, 4]")
    set_override(data, "data.options.task=parity")
    set_override(data, "adapter.shared_prototypes=true")
    assert data == {
        "train": {"lr": 0.5},
        "seeds": [3, 4],
        "data": {"options": {"task": "parity"}},
        "adapter": {"shared_prototypes": True},
    }


def test_set_override_without_equals_raises() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        set_override({}, "train.lr")


def test_set_override_through_scalar_raises() -> None:
    with pytest.raises(ConfigError, match=r"'train\.lr': is not a table"):
        set_override({"train": {"lr": 0.1}}, "train.lr.x=1")


def test_load_config_applies_overrides_then_validates(tmp_path: Path) -> None:
    path = _write(tmp_path, '[train]\nlr = 0.1\n[data]\noptions = {task = "mod3"}\n')
    config = load_config(path, ["train.lr=0.2", "pruning.criterion=weight"])
    assert config.train.lr == 0.2
    assert config.pruning.criterion == "weight"
    assert config.data.options == {"task": "mod3"}


def test_load_config_override_with_unknown_key_names_it(tmp_path: Path) -> None:
    path = _write(tmp_path, "")
    with pytest.raises(ConfigError, match=r"'train\.epochs': unknown key"):
        load_config(path, ["train.epochs=3"])


def test_load_config_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing.toml: config file not found"):
        load_config(tmp_path / "missing.toml")


def test_load_config_invalid_toml_names_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "[train\n")
    with pytest.raises(ConfigError, match="config.toml: invalid TOML"):
        load_config(path)


def test_config_to_toml_round_trips_and_stamps_version(tmp_path: Path) -> None:
    from spa import __version__

    config = from_dict(
        {
            "seeds": [0, 1],
            "model": {"options": {"small_input": True, "width": 8}, "weights": "w.pt"},
            "data": {"options": {"task": "parity"}},
            "pruning": {"densities": [0.5, 0.25], "round_to": 8},
        }
    )
    text = config_to_toml(config)
    data = tomllib.loads(text)
    assert data["spa_version"] == __version__
    assert from_dict(data) == config
    assert to_dict(from_dict(data)) == to_dict(config)


def test_dumps_toml_round_trips_nested_data() -> None:
    data = {
        "a": 1,
        "b": 2.5,
        "c": 'quote " and \\ backslash',
        "d": [1, 2],
        "e": True,
        "t": {"x": {"y": [0.5]}, "z": "w"},
        "empty": {},
    }
    assert tomllib.loads(dumps_toml(data)) == data


def test_dumps_toml_rejects_none() -> None:
    with pytest.raises(TypeError, match="t.x"):
        dumps_toml({"t": {"x": None}})


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 0.0, -0.1])
def test_from_dict_rejects_nonsense_learning_rate(value: float) -> None:
    with pytest.raises(ConfigError, match=r"'train.lr': must be a finite number > 0"):
        from_dict({"train": {"lr": value}})


def test_from_dict_rejects_infinite_weight_decay() -> None:
    with pytest.raises(ConfigError, match=r"'train.weight_decay': must be a finite number"):
        from_dict({"train": {"weight_decay": float("inf")}})


@pytest.mark.parametrize("densities", [[], [1.0]])
def test_from_dict_rejects_densities_that_prune_nothing(densities: list[float]) -> None:
    with pytest.raises(ConfigError, match=r"'pruning.densities': must list at least one density"):
        from_dict({"pruning": {"densities": densities}})


def test_from_dict_accepts_no_densities_without_pruning() -> None:
    config = from_dict({"pruning": {"densities": [], "schedule": "none"}})
    assert config.pruning.density_steps() == []


def test_load_config_refuses_inf_override_naming_the_key(tmp_path: Path) -> None:
    path = _write(tmp_path, 'name = "x"\n')
    with pytest.raises(ConfigError, match=r"'train.lr'.*got inf"):
        load_config(path, ["train.lr=inf"])


def test_pruning_units_are_checked_and_name_the_key() -> None:
    assert PruningConfig(units=("ffn",)).units == ("ffn",)
    with pytest.raises(ConfigError, match=r"'pruning\.units'.*'heads', 'ffn'"):
        from_dict({"pruning": {"units": ["neurons"]}})


def test_round_to_per_unit_round_trips_and_bad_values_name_the_key() -> None:
    data = {"pruning": {"units": ["heads", "ffn", "hidden"], "round_to": {"hidden": 4}}}
    config = from_dict(data)
    assert config.pruning.round_to == {"hidden": 4}
    assert from_dict(tomllib.loads(config_to_toml(config))) == config
    for bad in ({"hidden": 0}, {"residual": 4}, {"hidden": True}, 0):
        with pytest.raises(ConfigError, match=r"'pruning.round_to'.*integer >= 1"):
            from_dict({"pruning": {"round_to": bad}})
