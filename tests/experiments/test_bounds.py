"""Config numbers that size memory are bounded when the config is read, naming the key."""

from __future__ import annotations

import pytest
from torch import nn

import spa
from spa.errors import ConfigError, SpaWarning
from spa.experiments.bounds import BOUNDS
from spa.experiments.build import adapt_model
from spa.experiments.config import from_dict
from spa.models import create_model

ISSUE_CASES = {  # issue 24: each passed validation and failed later in allocation
    "adapter.rank": 100_000,
    "data.options.size": 100_000,
    "model.options.num_classes": 1e9,
    "train.latency_batch_size": 1e9,
}


def _config(key: str, value) -> dict:
    data = {"adapter": {"kind": "splora"}}
    *parents, last = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return data


@pytest.mark.parametrize("key", sorted(ISSUE_CASES))
def test_the_issue_values_are_refused_naming_the_key(key):
    with pytest.raises(ConfigError, match=rf"config key '{key}': must be"):
        from_dict(_config(key, ISSUE_CASES[key]))


@pytest.mark.parametrize("key", sorted(BOUNDS))
def test_each_bound_accepts_its_value_and_refuses_one_more(key):
    from_dict(_config(key, BOUNDS[key]))
    with pytest.raises(ConfigError, match=rf"config key '{key}': must be between 1 and"):
        from_dict(_config(key, BOUNDS[key] + 1))


@pytest.mark.parametrize("value", ["12", 2.0, True])
def test_a_non_integer_size_is_refused_naming_the_key(value):
    with pytest.raises(ConfigError, match="config key 'data.options.size': must be an integer"):
        from_dict(_config("data.options.size", value))


def _tiny() -> nn.Module:
    # Matrices: conv1 16 x 1, conv2 32 x 16, the block's 32 x 32 convs (widths 1, 16, 32).
    return create_model("tiny_convnet", num_classes=2)


def test_a_rank_wider_than_every_layer_of_the_run_s_model_names_adapter_rank():
    config = from_dict({"adapter": {"kind": "splora", "rank": 33}})
    with pytest.raises(ConfigError, match=r"config key 'adapter.rank': adapt: rank 33 exceeds"):
        adapt_model(_tiny(), config)


@pytest.mark.parametrize("kind,schedule", [("splora", "iterative"), ("lora", "none")])
def test_a_run_s_rank_is_capped_per_layer(kind, schedule):
    table = {"adapter": {"kind": kind, "rank": 32}, "pruning": {"schedule": schedule}}
    config = from_dict(table)
    with pytest.warns(SpaWarning, match=r"on 2 of 4 adapted layer\(s\): conv1 \(32 -> 1\)"):
        model = adapt_model(_tiny(), config)
    ranks = {name: layer.rank for name, layer in spa.adapter_layers(model)}
    assert ranks == {"conv1": 1, "conv2": 16, "layer1.conv1": 32, "layer1.conv2": 32}


@pytest.mark.parametrize("field,value", [("prototype_rank", 5), ("num_prototypes", 17)])
def test_splopa_prototype_sizes_beyond_a_block_name_their_key(field, value):
    table = {"kind": "splopa", "block_shape": [4, 4], "num_prototypes": 4, field: value}
    with pytest.raises(ConfigError, match=rf"config key 'adapter.{field}': {field} {value} "):
        from_dict({"adapter": table})
