"""Every config validation error, asserted by message."""

from __future__ import annotations

import pytest

from spa import FinePruningConfig, SPLoPAConfig, SPLoRAConfig
from spa.errors import ConfigError


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"rank": 0}, "rank must be > 0, got 0"),
        ({"rank": 2.5}, "rank must be an integer > 0, got 2.5"),
        ({"rank": True}, "rank must be an integer > 0, got True"),
        ({"rank_fraction": 0.0}, r"rank_fraction must be in \(0, 1\], got 0.0"),
        ({"rank_fraction": 1.5}, r"rank_fraction must be in \(0, 1\], got 1.5"),
        ({"init_range": 0.0}, "init_range must be > 0, got 0.0"),
        ({"init_range": -1e-4}, "init_range must be > 0, got -0.0001"),
        ({"target_modules": 3}, "target_modules must be a regex string, a list of name suffixes"),
        ({"exclude_modules": [1]}, "exclude_modules must be a regex string"),
        ({"head_modules": {"fc"}}, "head_modules must be a regex string"),
        ({"trainable": "norm"}, "trainable must be a tuple of group names, got 'norm'"),
        ({"trainable": ("norms",)}, r"trainable has unknown group\(s\) \['norms'\]; allowed"),
    ],
)
def test_splora_config_rejects(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SPLoRAConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"block_shape": (0, 32)}, r"block_shape must be two positive integers \(p, q\)"),
        ({"block_shape": (32,)}, "block_shape must be two positive integers"),
        ({"block_shape": (32.0, 32)}, "block_shape must be two positive integers"),
        ({"num_prototypes": 0}, "num_prototypes must be > 0, got 0"),
        ({"prototype_rank": -1}, "prototype_rank must be > 0, got -1"),
        ({"init_range": 0}, "init_range must be > 0, got 0"),
        ({"trainable": ("head", "everything")}, r"unknown group\(s\) \['everything'\]"),
    ],
)
def test_splopa_config_rejects(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SPLoPAConfig(**kwargs)


def test_fine_pruning_config_rejects_bad_selection():
    with pytest.raises(ConfigError, match="target_modules must be a regex string"):
        FinePruningConfig(target_modules=5)


def test_configs_are_frozen_and_keyword_only():
    config = SPLoPAConfig(block_shape=[16, 8])
    assert config.block_shape == (16, 8)
    with pytest.raises(AttributeError):
        config.num_prototypes = 3
    with pytest.raises(TypeError):
        SPLoRAConfig(8)
