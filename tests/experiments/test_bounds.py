"""Config numbers that size memory are bounded when the config is read, naming the key."""

from __future__ import annotations

import pytest

from spa.errors import ConfigError
from spa.experiments.bounds import BOUNDS
from spa.experiments.config import from_dict

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
