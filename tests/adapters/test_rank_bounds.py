"""A rank wider than every layer's weight matrix is refused at adapt time, naming the widest."""

from __future__ import annotations

import pytest
from torch import nn

import spa
from spa.errors import ConfigError


def _net() -> nn.Module:
    # Matrices: conv 8 x 4 (out x in), fc1 5 x 8, head 3 x 5 (never adapted).
    return nn.Sequential(nn.Conv2d(4, 8, 3), nn.Flatten(), nn.Linear(8, 5), nn.Linear(5, 3))


def test_a_rank_above_the_widest_layer_is_refused_naming_it():
    # Adapted: conv 8 x 4 and fc1 5 x 8 (the head is not); the widest side is 8.
    spa.adapt(_net(), spa.SPLoRAConfig(rank=8))
    with pytest.raises(ConfigError, match=r"rank 9 exceeds .*the widest, '0', has a 8 x 4"):
        spa.adapt(_net(), spa.SPLoRAConfig(rank=9))


def test_the_issue_case_rank_100000_is_refused_before_any_allocation():
    with pytest.raises(ConfigError, match="rank 100000 exceeds"):
        spa.adapt(_net(), spa.SPLoRAConfig(rank=100_000))
