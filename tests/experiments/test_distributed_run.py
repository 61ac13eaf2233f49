"""The runner's distributed-only steps in one process (multi-rank: test_runner_distributed)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import spa
from spa.distributed import DistributedContext, mask_fingerprint
from spa.errors import ConfigError
from spa.experiments.config import ExperimentConfig, PruningConfig
from spa.experiments.distributed_run import check_distributed, prune_on_all_ranks
from spa.experiments.pruning_steps import ChannelPruner
from spa.models import create_model

GLOO = DistributedContext(0, 2, 0, "gloo", torch.device("cpu"))
NCCL = DistributedContext(0, 2, 0, "nccl", torch.device("cuda", 0))
SINGLE = DistributedContext(0, 1, 0, None, torch.device("cpu"))


def _config(**sections) -> ExperimentConfig:
    config = ExperimentConfig()
    return dataclasses.replace(
        config,
        **{
            name: dataclasses.replace(getattr(config, name), **values)
            for name, values in sections.items()
        },
    )


def test_check_distributed_accepts_default_config_on_gloo():
    check_distributed(_config(), GLOO)


def test_check_distributed_single_process_accepts_anything():
    check_distributed(_config(data={"name": "squad", "batch_size": 15}), SINGLE)


def test_check_distributed_rejects_indivisible_batch():
    with pytest.raises(ConfigError, match="global batch size 15 .* processes \\(2\\)"):
        check_distributed(_config(data={"batch_size": 15}), GLOO)


def test_check_distributed_rejects_squad():
    with pytest.raises(ConfigError, match="data.name='squad'.*without torchrun"):
        check_distributed(_config(data={"name": "squad"}), GLOO)


def test_check_distributed_rejects_cpu_device_with_nccl():
    with pytest.raises(ConfigError, match="train.device='cpu' with the nccl backend"):
        check_distributed(_config(), NCCL)
    check_distributed(_config(train={"device": "cuda"}), NCCL)


def test_prune_on_all_ranks_single_process_equals_pruner():
    example = torch.randn(2, 1, 8, 8)
    data = [(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))]
    fingerprints = []
    for use_runner_step in (False, True):
        torch.manual_seed(0)
        model = spa.adapt(create_model("tiny_convnet", num_classes=4, width=4), spa.SPLoRAConfig())
        pruner = ChannelPruner(model, example, PruningConfig(criterion="taylor"))
        if use_runner_step:
            prune_on_all_ranks(model, pruner, 0.5, data)
        else:
            pruner.prune_to(model, 0.5, data)
        assert pruner.masks() is not None
        fingerprints.append(mask_fingerprint(model))
    torch.manual_seed(0)
    unpruned = spa.adapt(create_model("tiny_convnet", num_classes=4, width=4), spa.SPLoRAConfig())
    assert fingerprints[0] == fingerprints[1] != mask_fingerprint(unpruned)
