"""A task whose ranks `adapt` capped at the layers' widths (issue 24) saves, loads (compacted and
trainable) and serves from a `TaskHost` exactly."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import spa
from spa.deploy import compacted
from spa.errors import SpaWarning
from spa.tasks import load_task, save_task

from .helpers import pruned_task


class _DepthwiseNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)  # 8 x 3: rank 3 at most
        self.bn1 = nn.BatchNorm2d(8)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # 8 x 1: rank 1
        self.bn2 = nn.BatchNorm2d(8)
        self.pointwise = nn.Conv2d(8, 16, 1)  # 16 x 8: the asked rank 6
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.stem(x)).relu()
        x = self.pointwise(self.bn2(self.depthwise(x)).relu()).relu()
        return self.fc(x.mean(dim=(2, 3)))


RANKS = {"stem": 3, "depthwise": 1, "pointwise": 6}


@pytest.fixture
def saved(tmp_path):
    base = _DepthwiseNet().eval()
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpaWarning)  # the cap's warning, tested elsewhere
        model = pruned_task(base, x, spa.SPLoRAConfig(rank=6), 0.6)
    assert {name: layer.rank for name, layer in spa.adapter_layers(model)} == RANKS
    assert not all(bool(layer.out_mask.all()) for _, layer in spa.adapter_layers(model))
    path = tmp_path / "task.safetensors"
    save_task(compacted(model, (x,)), path, base_model=base)
    with torch.no_grad():
        expected = model(x)
    return base, x, path, expected


def test_a_capped_task_loads_compacted(saved):
    base, x, path, expected = saved
    with torch.no_grad():
        torch.testing.assert_close(load_task(base, path)(x), expected, rtol=1e-5, atol=1e-5)


def test_a_capped_task_loads_trainable_with_its_ranks(saved):
    base, x, path, expected = saved
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpaWarning)
        trainable = load_task(base, path, trainable=True, example_inputs=(x,))
    assert {name: layer.rank for name, layer in spa.adapter_layers(trainable)} == RANKS
    with torch.no_grad():
        torch.testing.assert_close(trainable(x), expected, rtol=1e-5, atol=1e-5)


def test_a_capped_task_serves_from_a_task_host(saved):
    base, x, path, expected = saved
    host = spa.TaskHost(base)
    host.add_task("capped", path)
    torch.testing.assert_close(host("capped", x), expected, rtol=1e-5, atol=1e-5)
