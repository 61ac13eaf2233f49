"""DESIGN §4's invariants over every registered adapter kind x every base layer type it adapts.

The table iterates `spa.ADAPTER_KINDS`, so a new kind inherits it; `scaled_lowrank` is a kind
defined only in this test package and passes the same table with no change under `spa/`.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import spa
from spa.adapters import BlockMasked, ChannelMasked, adapter_layers
from spa.errors import BundleError
from spa.families import block_layouts, describe
from spa.pruning import apply_masks, channel_groups, compute_masks
from tests._transformers import HIDDEN
from tests._transformers import bert as tiny_bert
from tests.contract import scaled_lowrank  # noqa: F401 - registers the test-only kind
from tests.contract.cases import CASES
from tests.contract.nets import NETS

TABLE = [
    pytest.param(kind, layer, id=f"{kind}-{layer}")
    for kind in spa.ADAPTER_KINDS
    for layer in CASES[kind].layer_types
]


def _adapted(kind: str, layer: str) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    base, x = NETS[layer]()
    model = spa.adapt(copy.deepcopy(base), CASES[kind].config())
    return base.eval(), model, x


def _mask_randomly(model: nn.Module, x: torch.Tensor) -> None:
    """Non-trivial, consistent masks: channel pruning at density 0.5, random block masks."""
    if any(isinstance(m, ChannelMasked) for m in model.modules()):
        groups = channel_groups(model, x)
        scores = {i: torch.rand(group.size) for i, group in enumerate(groups)}
        apply_masks(model, compute_masks(groups, scores, 0.5))
    for _, layer in adapter_layers(model):
        if isinstance(layer, BlockMasked):
            mask = torch.rand(layer.block_mask.shape) > 0.4
            mask.view(-1)[0] = True
            layer.block_mask.copy_(mask)


@torch.no_grad()
def _perturb(model: nn.Module) -> None:
    """Trained-looking, clearly non-zero adapters (or fine-pruned weights)."""
    for _, layer in adapter_layers(model):
        for parameter in layer.trainable_parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))


def _trained(kind: str, layer: str) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    base, model, x = _adapted(kind, layer)
    _mask_randomly(model, x)
    _perturb(model)
    return base, model.eval(), x


def test_every_registered_kind_has_a_contract_case() -> None:
    assert set(spa.ADAPTER_KINDS) == set(CASES)


@pytest.mark.parametrize("kind,layer", TABLE)
def test_contract_near_identity_at_init(kind: str, layer: str) -> None:
    base, model, x = _adapted(kind, layer)
    assert spa.adapters.adapt_report(model).adapted  # the kind wrapped something
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), base(x), rtol=0, atol=1e-3)


@pytest.mark.parametrize("kind,layer", TABLE)
def test_contract_only_adapter_parameters_train(kind: str, layer: str) -> None:
    _, model, x = _adapted(kind, layer)
    config = CASES[kind].config()
    head = {id(p) for p in model[-1].parameters()}
    adapter = {id(p) for _, m in adapter_layers(model) for p in m.trainable_parameters()}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    model.train()(x).square().mean().backward()
    for name, parameter in model.named_parameters():
        if parameter.grad is not None and "all" not in config.trainable:
            assert id(parameter) in adapter | head, name
    assert all(
        p.grad is not None for _, m in adapter_layers(model) for p in m.trainable_parameters()
    )
    optimizer.step()
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            assert torch.equal(parameter, before[name]), name  # frozen base: bit-identical


@pytest.mark.parametrize("kind,layer", TABLE)
def test_contract_fused_equals_adapted(kind: str, layer: str) -> None:
    base, model, x = _trained(kind, layer)
    fused = spa.fuse(model)
    assert not spa.adapters.is_adapted(fused)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(expected, base(x), atol=1e-3)
        for name, adapter in adapter_layers(model):
            reference = CASES[kind].reference_weight(adapter)
            torch.testing.assert_close(adapter.fused_weight(), reference, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(
                fused.get_submodule(name).weight, reference, rtol=1e-5, atol=1e-6
            )


def _block_pruned_transformer(kind: str) -> tuple[nn.Module, torch.Tensor]:
    """A tiny BERT (a described family) adapted with `kind`, masked randomly and trained-looking,
    with the value rows of one head and the down columns of some FFN neurons emptied."""
    model = spa.adapt(tiny_bert(), CASES[kind].config())
    x = torch.randn(2, 5, HIDDEN)
    _mask_randomly(model, x)
    _perturb(model)
    layout = block_layouts(model, describe(model))[0]
    value, down = model.get_submodule(layout.value), model.get_submodule(layout.ffn_output)
    rows, columns = value.block_shape[0], down.block_shape[1]
    with torch.no_grad():
        value.block_mask[: layout.head_dim // rows] = False  # head 0
        down.block_mask[:, : 8 // columns] = False  # neurons 0-7
    return model.eval(), x


@pytest.mark.parametrize("kind,layer", TABLE)
def test_contract_compacted_equals_masked(kind: str, layer: str) -> None:
    _, model, x = _trained(kind, layer)
    if not any(isinstance(m, ChannelMasked) for _, m in adapter_layers(model)):
        # Block kinds: emptied heads and FFN neurons go, which needs a described family.
        model, x = _block_pruned_transformer(kind)
        compacted, report = spa.compact_blocks(model, x)
        with torch.no_grad():
            torch.testing.assert_close(compacted(x), model(x), rtol=1e-5, atol=1e-5)
        assert sum(p.numel() for p in compacted.parameters()) < report.parameters_before
        assert report.parameters_before == sum(p.numel() for p in spa.fuse(model).parameters())
        assert report.flops_after < report.flops_before
        assert report.density == pytest.approx(spa.density(model))
        return
    compacted = spa.compact(copy.deepcopy(model), x)
    with torch.no_grad():
        torch.testing.assert_close(compacted(x), model(x), rtol=1e-5, atol=1e-5)
    count = lambda m: sum(p.numel() for p in spa.fuse(m).parameters())  # noqa: E731
    assert count(compacted) < count(model)
    assert spa.density(compacted) == pytest.approx(spa.density(model))


@pytest.mark.parametrize("kind,layer", TABLE)
def test_contract_bundle_round_trip_is_exact(kind: str, layer: str, tmp_path) -> None:
    base, model, x = _trained(kind, layer)
    path = tmp_path / "task.safetensors"
    bundle = spa.save_task(spa.compacted(model, x), path, base_model=base)
    assert {entry["kind"] for entry in bundle.metadata["layers"]} == {kind}
    assert bundle.metadata["density"] == pytest.approx(spa.density(model))
    loaded = spa.load_task(base, path)
    deployed = model
    if any(isinstance(m, ChannelMasked) for _, m in adapter_layers(model)):
        deployed = spa.compact(copy.deepcopy(model), x)
    with torch.no_grad():
        assert torch.equal(loaded(x), spa.fuse(deployed)(x))
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,layer", TABLE)
def test_contract_bundle_refuses_a_foreign_base(kind: str, layer: str, tmp_path) -> None:
    base, model, x = _trained(kind, layer)
    path = tmp_path / "task.safetensors"
    spa.save_task(spa.compacted(model, x), path, base_model=base)
    foreign = copy.deepcopy(base)
    with torch.no_grad():
        next(foreign.parameters()).add_(1.0)
    with pytest.raises(BundleError, match="trained against base"):
        spa.load_task(foreign, path)


@pytest.mark.parametrize("kind,layer", TABLE)
def test_contract_dparams_equal_the_formula(kind: str, layer: str) -> None:
    _, model, _ = _trained(kind, layer)
    layers = [m for _, m in adapter_layers(model)]
    head = model[-1]
    inputs = head.in_features  # the head reads the last adapted layer's kept output channels
    if isinstance(layers[-1], ChannelMasked):
        inputs = int(layers[-1].out_mask.sum())
    expected = head.out_features * inputs + head.bias.numel()
    expected += sum(CASES[kind].dparams(m) for m in layers)
    assert spa.count_learned_parameters(model) == expected


@pytest.mark.parametrize("kind,layer", TABLE)
def test_contract_density_counts_retained_base_weights(kind: str, layer: str) -> None:
    _, model, _ = _trained(kind, layer)
    retained = total = 0
    for _, adapter in adapter_layers(model):
        weight = adapter.base.weight
        total += weight.numel()
        if isinstance(adapter, BlockMasked):
            retained += int(adapter.block_mask.sum()) * math.prod(adapter.block_shape)
        else:
            kept = int(adapter.out_mask.sum()) * int(adapter.in_mask.sum())
            retained += kept * math.prod(weight.shape[2:])
    assert 0 < retained < total
    assert spa.density(model) == pytest.approx(retained / total)
