"""`ADAPTER_KINDS`: dispatch by config type, registration rules, block fine-pruning via adapt."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import spa
from spa.adapters import ADAPTER_KINDS, AdapterKind, kind_for_config, register_kind
from spa.adapters.registry import PRUNING_KINDS
from spa.errors import ConfigError, NoTargetsError


@pytest.mark.parametrize("name", ADAPTER_KINDS.names())
def test_every_kind_is_found_by_its_config_type(name: str):
    kind = ADAPTER_KINDS.get(name)
    assert kind_for_config(kind.config_type()) is kind


@pytest.mark.parametrize("name", ADAPTER_KINDS.names())
def test_every_kind_says_what_it_prunes_and_labels_a_default_config(name: str):
    kind = ADAPTER_KINDS.get(name)
    assert kind.pruning in PRUNING_KINDS
    label = kind.table_label(kind.config_type())
    assert label and "{" not in label


def test_a_label_template_is_filled_from_the_config():
    kind = ADAPTER_KINDS.get("splopa")
    config = spa.SPLoPAConfig(num_prototypes=3, block_shape=(2, 4))
    assert kind.table_label(config) == "SPLoPA R3 2x4"


def test_a_kind_without_a_label_is_named_by_its_name_and_bad_pruning_is_refused():
    existing = ADAPTER_KINDS.get("splora")
    kind = AdapterKind("mine", spa.SPLoRAConfig, (nn.Linear,), existing.make_layer)
    assert kind.table_label(spa.SPLoRAConfig()) == "mine"
    with pytest.raises(ConfigError, match=r"'mine': pruning must be one of .* got 'rows'"):
        AdapterKind("mine", spa.SPLoRAConfig, (nn.Linear,), existing.make_layer, pruning="rows")


def test_adapt_refuses_an_object_no_kind_accepts():
    @dataclasses.dataclass(frozen=True)
    class NotAConfig:
        rank: int = 2

    with pytest.raises(ConfigError, match="NotAConfig is not an adapter config; known: .*SPLoRA"):
        spa.adapt(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), NotAConfig())


def test_register_kind_refuses_a_duplicate_name():
    existing = ADAPTER_KINDS.get("splora")
    with pytest.raises(ValueError, match="'splora' is already registered"):
        register_kind(AdapterKind("splora", object, (nn.Linear,), existing.make_layer))


def test_block_fine_pruning_goes_through_adapt_with_a_report():
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3), nn.Linear(3, 2))
    spa.adapt(model, spa.BlockFinePruningConfig(block_shape=(2, 2)))
    report = spa.adapters.adapt_report(model)
    assert report.adapted == ["0"]
    assert report.head == ["3"] and "task head" in report.skipped["3"]
    assert "not divisible by block_shape=(2, 2)" in report.skipped["2"]
    assert isinstance(model[0], spa.adapters.BlockMasked)
    assert all(p.requires_grad for p in model.parameters())  # fine-pruning freezes nothing


def test_wrap_block_fine_pruning_is_adapt():
    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 2))
    spa.adapters.wrap_block_fine_pruning(model, (2, 2))
    assert type(spa.adapters.adapt_report(model).config) is spa.BlockFinePruningConfig
    with pytest.raises(NoTargetsError, match="BlockFinePruningConfig: no layer was adapted"):
        spa.adapters.wrap_block_fine_pruning(nn.Sequential(nn.Linear(3, 3)), (2, 2))


def test_block_fine_pruning_config_validates_block_shape():
    with pytest.raises(ConfigError, match=r"block_shape must be two positive integers .* \(0, 2\)"):
        spa.BlockFinePruningConfig(block_shape=(0, 2))


def test_adapt_report_is_none_for_a_plain_model():
    assert spa.adapters.adapt_report(nn.Linear(2, 2)) is None


def test_replace_module_puts_a_module_at_a_dotted_path():
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 2)))
    new = nn.Identity()
    spa.adapters.replace_module(model, "0.0", new)
    assert model[0][0] is new
    assert torch.equal(model(torch.ones(1, 2)), torch.ones(1, 2))
