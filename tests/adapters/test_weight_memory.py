"""At most one full-size derived weight per adapted layer, none with `cache_fused_weights(False)`
or between a training forward and its backward; every path computes Eq. 4 / Eq. 6 (issue 22)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import spa
from tests.conftest import CONVS

# Odd sizes no other tensor of these tests has, so tensors of the weight's shape are counted.
OUT, IN = 12, 10


class _FullSizeStorages(TorchDispatchMode):
    """Records every storage an op writes a tensor of `shape` into; `alive()` counts those not
    freed yet (weak references to the storages themselves, so tensors autograd saved count)."""

    def __init__(self, base_weight: torch.Tensor) -> None:
        super().__init__()
        self.shape = base_weight.shape
        self.base = base_weight.untyped_storage().data_ptr()  # views of it are no new memory
        self.storages: dict[int, StorageWeakRef] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else (out,):
            if isinstance(tensor, torch.Tensor) and tensor.shape == self.shape:
                storage = tensor.untyped_storage()
                if storage.data_ptr() != self.base:
                    self.storages[storage.data_ptr()] = StorageWeakRef(storage)
        return out

    def alive(self) -> int:
        return sum(not ref.expired() for ref in self.storages.values())


def _masked(config, base: nn.Module) -> nn.Module:
    model = spa.adapt(nn.Sequential(base), config)
    layer = model[0]
    for mask in layer.masks().values():
        mask.copy_(torch.rand(mask.shape) < 0.7)
        mask.view(-1)[0] = True
    for name in layer.adapter_parameter_names():
        nn.init.normal_(getattr(layer, name), std=0.3)
    return model


def _splora() -> spa.SPLoRAConfig:
    return spa.SPLoRAConfig(rank=2, trainable=(), head_modules=[])  # no head: adapt every layer


CASES = {
    "splora": lambda: (_splora(), nn.Linear(IN, OUT)),
    "splora-conv": lambda: (_splora(), nn.Conv2d(IN, OUT, 3)),
    "splopa": lambda: (
        spa.SPLoPAConfig(block_shape=(2, 2), num_prototypes=2, trainable=(), head_modules=[]),
        nn.Linear(IN, OUT),
    ),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("cache", [True, False])
def test_an_adapted_layer_keeps_at_most_one_full_size_weight(case, cache):
    config, base = CASES[case]()
    model = spa.cache_fused_weights(_masked(config, base), cache)
    x = torch.randn(3, IN, 5, 5) if base.weight.dim() > 2 else torch.randn(3, IN)
    kept = 1 if cache else 0  # derived full-size weights a layer may keep
    with _FullSizeStorages(base.weight) as derived:
        for _ in range(2):
            with torch.no_grad():
                model.eval()(x)
            assert derived.alive() <= kept
            out = model.train()(x)  # the graph holds no full-size weight until backward
            assert derived.alive() <= kept
            out.square().sum().backward()
            del out
            assert derived.alive() <= kept
        assert derived.storages or not cache  # a cached layer did form full-size weights
        spa.cache_fused_weights(model, False)  # switching off drops a kept weight at once
        assert derived.alive() == 0


def _conv_eq4(layer, x: torch.Tensor) -> torch.Tensor:
    """Eq. 4 written out: the masked kernel plus the adapter at the centre tap, then the conv."""
    base = layer.base
    weight = base.weight * (layer.out_mask[:, None] & layer.in_mask[None, :]).reshape(
        layer.out_mask.shape + layer.in_mask.shape + (1,) * (base.weight.dim() - 2)
    )
    centre = tuple(k // 2 for k in base.weight.shape[2:])
    matrix = (layer.down * layer.out_mask[:, None]) @ (layer.up * layer.in_mask[None, :])
    weight = weight.clone()
    weight[(slice(None), slice(None)) + centre] += matrix
    conv = getattr(F, f"conv{base.weight.dim() - 2}d")
    bias = base.bias * layer.out_mask
    return conv(x, weight, bias, base.stride, base.padding, base.dilation, base.groups)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_splora_without_a_weight_cache_computes_eq4_and_its_gradients(dims, groups):
    base = CONVS[dims](8, 8, 3, padding=1, groups=groups)  # in/groups >= 2: rank 2 fits
    model = spa.cache_fused_weights(_masked(_splora(), base), False)
    layer = model[0]
    x = torch.randn(2, 8, *([5] * dims))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), _conv_eq4(layer, x), rtol=1e-5, atol=1e-5)
    model.train()(x).square().sum().backward()
    got = (layer.down.grad.clone(), layer.up.grad.clone())
    layer.down.grad = layer.up.grad = None
    _conv_eq4(layer, x).square().sum().backward()
    torch.testing.assert_close(got, (layer.down.grad, layer.up.grad), rtol=1e-4, atol=1e-5)


def test_splora_linear_without_a_weight_cache_equals_the_cached_layer():
    config, base = CASES["splora"]()
    model = _masked(config, base)
    x = torch.randn(4, IN)
    with torch.no_grad():
        cached = model.eval()(x)
        spa.cache_fused_weights(model, False)
        factored = model(x)
        layer = model[0]
        weight = layer.base.weight * torch.outer(layer.out_mask, layer.in_mask)
        weight = weight + (layer.down * layer.out_mask[:, None]) @ (layer.up * layer.in_mask)
        expected = F.linear(x, weight, layer.base.bias * layer.out_mask)  # Eq. 4
    torch.testing.assert_close(factored, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cached, expected, rtol=1e-5, atol=1e-6)
