"""Any CNN a user brings (issue 11): each family through the README's pipeline, per criterion.

adapt (SPLoRA) -> forward -> training step -> channel_groups -> score -> compute_masks (density
0.3) -> apply_masks -> masked forward -> compact -> fuse -> save_task -> load_task -> TaskHost.
The expected values come from elsewhere than the code under test: the compacted model (built by
Torch-Pruning's slicing) for the masked one, perturbations of removed weights for "removed
channels contribute exactly zero", and the base model for "the base stays frozen".
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spa
from spa.errors import SpaWarning
from spa.pruning import apply_masks, channel_groups, compute_masks, score
from spa.pruning.criteria import CRITERIA as CRITERION_REGISTRY

from ._families import FAMILIES, IMAGE_SIZE, build, logits

CRITERIA = tuple(CRITERION_REGISTRY.names())  # every registered channel criterion


@dataclass
class Prepared:
    base: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    model: nn.Module  # adapted and trained one step, not masked
    groups: list


def _prepare(family: str) -> Prepared:
    base = build(family)
    x, y = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE), torch.tensor([1, 3])
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2))
    for _, layer in spa.adapter_layers(model):
        nn.init.normal_(layer.up, std=0.05)  # a non-trivial adapter
    # One training step; norm statistics stay frozen (a batch of two at 1x1 resolution would
    # make EfficientNet's BatchNorm statistics degenerate).
    trainable = [p for p in model.parameters() if p.requires_grad]
    F.cross_entropy(logits(model.eval()(x)), y).backward()
    torch.optim.SGD(trainable, lr=0.05).step()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpaWarning)  # every group of these families is prunable
        groups = channel_groups(model, x[:1])
    return Prepared(base, x, y, model, groups)


@pytest.fixture(scope="module")
def prepared():
    cache: dict[str, Prepared] = {}

    def get(family: str) -> Prepared:
        if family not in cache:
            torch.manual_seed(1)
            cache[family] = _prepare(family)
        return cache[family]

    return get


def _run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return logits(model.eval()(x))


def _assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal within 1e-4 relative to the largest expected value."""
    error = (actual - expected).abs().max()
    assert error <= 1e-4 * expected.abs().max(), f"max error {error} vs {expected.abs().max()}"


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _perturb_removed(model: nn.Module) -> None:
    """Add noise to every weight, factor and norm entry of a removed channel."""
    with torch.no_grad():
        for _, layer in spa.adapter_layers(model):
            rows, cols = ~layer.out_mask, ~layer.in_mask
            layer.base.weight[rows] += torch.randn_like(layer.base.weight[rows])
            layer.base.weight[:, cols] += torch.randn_like(layer.base.weight[:, cols])
            layer.down[rows] += torch.randn_like(layer.down[rows])
            layer.up[:, cols] += torch.randn_like(layer.up[:, cols])
            if layer.base.bias is not None:
                layer.base.bias[rows] += 1.0
        for module in model.modules():
            mask = getattr(module, "spa_out_mask", None)
            if mask is not None and getattr(module, "bias", None) is not None:
                module.bias[~mask.to(module.bias.device)] += 1.0


@pytest.mark.parametrize("family", FAMILIES)
def test_wrapping_keeps_the_host_models_computation(family):
    """With zero adapters the adapted model is the base (MobileNetV2 reads conv.stride etc.)."""
    base = build(family)
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2))
    for _, layer in spa.adapter_layers(model):
        nn.init.zeros_(layer.up)
    assert len(list(spa.adapter_layers(model))) >= 5
    _assert_close(_run(model, x), _run(base, x))


def test_training_step_leaves_the_base_untouched(prepared):
    p = prepared("efficientnet")
    base_state = p.base.state_dict()
    for _, layer in spa.adapter_layers(p.model):
        original = base_state[layer.name + ".weight"]
        assert torch.equal(layer.base.weight, original), layer.name


@pytest.mark.slow
@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("family", FAMILIES)
def test_family_pipeline(family, criterion, prepared, tmp_path):
    p = prepared(family)
    model = copy.deepcopy(p.model)
    unpruned = _run(model, p.x)
    scores = score(model, criterion, p.groups, data=[(p.x, p.y)])
    apply_masks(model, compute_masks(p.groups, scores, density=0.3))
    assert spa.density(model) <= 0.3 + 1e-9
    masked = _run(model, p.x)
    assert not torch.allclose(masked, unpruned, rtol=1e-3, atol=1e-3)

    # Removed channels contribute exactly zero: any value in them leaves the output unchanged.
    perturbed = copy.deepcopy(model)
    _perturb_removed(perturbed)
    assert torch.equal(_run(perturbed, p.x), masked)

    spa.compact(model, p.x)
    compacted = _run(model, p.x)
    _assert_close(compacted, masked)
    fused = spa.fuse(model)
    fused_out = _run(fused, p.x)
    _assert_close(fused_out, masked)
    assert _parameters(fused) < _parameters(p.base)
    assert spa.count_flops(fused, p.x) < spa.count_flops(p.base, p.x)

    pruned_path, dense_path = tmp_path / "pruned.safetensors", tmp_path / "dense.safetensors"
    spa.save_task(spa.compacted(model), pruned_path, base_model=p.base)
    spa.save_task(spa.compacted(p.model), dense_path, base_model=p.base)
    assert torch.equal(_run(spa.load_task(p.base, pruned_path), p.x), fused_out)

    host = spa.TaskHost(p.base)
    host.add_task("pruned", pruned_path)
    host.add_task("dense", dense_path)
    for task, expected in (("pruned", fused_out), ("dense", unpruned), ("pruned", fused_out)):
        host.set_task(task)
        with torch.no_grad():
            _assert_close(logits(host(p.x)), expected)


@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_convnext_layer_norm_mask_matches_the_hand_formula(data_format):
    """A masked ConvNeXt norm normalises over the kept channels of its own channel axis."""
    from transformers.models.convnext.modeling_convnext import ConvNextLayerNorm

    from spa.pruning.module_masks import set_module_mask

    norm = ConvNextLayerNorm(6, eps=1e-6, data_format=data_format)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    keep = torch.tensor([True, False, True, True, False, True])
    set_module_mask(norm, "out", keep)
    x = torch.randn(2, 6, 3, 4) if data_format == "channels_first" else torch.randn(2, 3, 4, 6)
    channels = x if data_format == "channels_first" else x.permute(0, 3, 1, 2)  # (N, C, H, W)
    kept = channels[:, keep]
    mean = kept.mean(dim=1, keepdim=True)
    variance = ((kept - mean) ** 2).mean(dim=1, keepdim=True)
    normed = (kept - mean) / torch.sqrt(variance + 1e-6)
    expected = torch.zeros_like(channels)
    expected[:, keep] = normed * norm.weight[keep, None, None] + norm.bias[keep, None, None]
    if data_format == "channels_last":
        expected = expected.permute(0, 2, 3, 1)
    torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-5)


def test_convnext_layer_scale_is_sliced_with_its_group(prepared):
    p = prepared("convnext")
    model = copy.deepcopy(p.model)
    apply_masks(model, compute_masks(p.groups, score(model, "weight", p.groups), density=0.3))
    spa.compact(model, p.x)
    blocks = [m for m in model.modules() if hasattr(m, "layer_scale_parameter")]
    assert blocks
    for block in blocks:
        assert block.layer_scale_parameter.numel() == block.pwconv2.base.weight.shape[0]
        assert block.layer_scale_parameter.numel() == block.dwconv.base.weight.shape[0]
    assert any(b.layer_scale_parameter.numel() < b.pwconv1.base_shape[1] for b in blocks)
