"""The `[adapter]` table: `kind` plus the kind's own fields, presets, and old `method` tables."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

import spa
from spa.adapters import ADAPTER_KINDS
from spa.errors import ConfigError
from spa.experiments.adapter_section import AdapterSection
from spa.experiments.config import config_to_toml, from_dict, to_dict


def _table_fields(name: str) -> list[str]:
    config_type = ADAPTER_KINDS.get(name).config_type
    return [f.name for f in dataclasses.fields(config_type) if f.name != "head_modules"]


@pytest.mark.parametrize("name", ADAPTER_KINDS.names())
def test_a_key_the_kind_lacks_is_refused_naming_the_kinds_fields(name: str) -> None:
    with pytest.raises(ConfigError) as error:
        AdapterSection.from_table({"kind": name, "no_such_field": 1})
    message = str(error.value)
    assert message.startswith("config key 'adapter.no_such_field': unknown for adapter.kind")
    assert message.endswith(f"its fields: {', '.join(_table_fields(name))}")
    assert "\n" not in message


@pytest.mark.parametrize("name", ADAPTER_KINDS.names())
def test_every_kind_round_trips_through_the_written_config(name: str) -> None:
    by_pruning = {"channel": {}, "block": {"criterion": "magnitude"}, "none": {"schedule": "none"}}
    pruning = by_pruning[ADAPTER_KINDS.get(name).pruning]
    config = from_dict({"adapter": {"kind": name}, "pruning": pruning})
    written = tomllib.loads(config_to_toml(config))
    assert written["adapter"]["kind"] == name and "method" not in written["adapter"]
    assert from_dict(written) == config


def test_head_modules_is_set_by_the_runner_not_the_table() -> None:
    with pytest.raises(ConfigError, match=r"'adapter\.head_modules': unknown for adapter\.kind"):
        AdapterSection.from_table({"kind": "splora", "head_modules": ["fc"]})


def test_a_bad_value_names_the_full_key_on_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^config key 'adapter\.rank': rank must be > 0, got 0$"):
        from_dict({"adapter": {"kind": "splora", "rank": 0}})
    with pytest.raises(ConfigError, match=r"^config key 'adapter\.block_shape\[1\]': must be an"):
        from_dict({"adapter": {"kind": "splopa", "block_shape": [2, "x"]}})


def test_list_fields_check_their_items() -> None:
    section = AdapterSection.from_table({"kind": "splora", "target_modules": ["q", "v"]})
    assert section.config.target_modules == ["q", "v"]
    with pytest.raises(ConfigError, match=r"'adapter\.target_modules'"):
        AdapterSection.from_table({"kind": "splora", "target_modules": ["q", 3]})


def test_old_method_tables_map_to_kinds_once() -> None:
    old = {"method": "splora", "rank": 4, "block_shape": [8, 8], "num_prototypes": 2}
    assert from_dict({"adapter": old}).adapter == AdapterSection(
        kind="splora", config=spa.SPLoRAConfig(rank=4)
    )
    lora = from_dict({"adapter": {"method": "lora", "rank": 4}, "pruning": {"schedule": "none"}})
    assert (lora.adapter.kind, lora.adapter.label()) == ("lora", "LoRA r4")
    channel = from_dict({"adapter": {"method": "fine-pruning", "rank": 8}})
    assert channel.adapter.config == spa.FinePruningConfig()
    block = from_dict(
        {
            "adapter": {"method": "fine-pruning", "block_shape": [4, 4]},
            "pruning": {"criterion": "movement", "schedule": "gradual"},
        }
    )
    assert block.adapter.config == spa.BlockFinePruningConfig(block_shape=(4, 4))
    assert tomllib.loads(config_to_toml(block))["adapter"] == {
        "kind": "block_fine_pruning",
        "block_shape": [4, 4],
        "trainable": ["all"],
    }


def test_old_and_new_names_together_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"'adapter\.method': is the old name of adapter\.kind"):
        from_dict({"adapter": {"method": "splora", "kind": "splora"}})


def test_a_whole_table_override_switches_kind(tmp_path) -> None:
    from spa.experiments.config import load_config

    path = tmp_path / "c.toml"
    path.write_text('[adapter]\nkind = "splora"\nrank = 4\n', encoding="utf-8")
    config = load_config(path, ['adapter={kind = "fine_pruning"}'])
    assert config.adapter == AdapterSection(kind="fine_pruning")


def test_a_run_directory_written_by_an_older_spa_reads_as_the_same_config() -> None:
    # The flat [adapter] table older versions wrote into config.toml, every field present.
    old = {
        "method": "splora",
        "rank": 8,
        "init_range": 1e-4,
        "block_shape": [32, 32],
        "num_prototypes": 64,
        "prototype_rank": 1,
        "shared_prototypes": False,
    }
    assert to_dict(from_dict({"adapter": old})) == to_dict(from_dict({"adapter": {"rank": 8}}))
