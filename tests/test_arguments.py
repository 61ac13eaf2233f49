"""None or a string where a model or a number is expected is a spa error naming the argument."""

from __future__ import annotations

import pytest

import spa
from spa.errors import ConfigError
from spa.tasks import load_task, save_task

CALLS = {
    "adapt": lambda bad: spa.adapt(bad, spa.SPLoRAConfig(rank=2)),
    "fuse": spa.fuse,
    "compact": spa.compact,
    "count_learned_parameters": spa.count_learned_parameters,
    "save_task": lambda bad: save_task(bad, "never.safetensors", base_model=bad),
    "load_task": lambda bad: load_task(bad, "never.safetensors"),
}


@pytest.mark.parametrize("bad", [None, "model.safetensors"])
@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_model_argument_that_is_not_a_module_is_named(name, bad):
    with pytest.raises(ConfigError, match=rf"^{name}: \w+ must be a torch.nn.Module, got"):
        CALLS[name](bad)


@pytest.mark.parametrize("rank", [None, "4", 2.5, True])
def test_a_rank_that_is_not_an_integer_is_named(rank):
    with pytest.raises(ConfigError, match="rank"):
        spa.SPLoRAConfig(rank=rank)
