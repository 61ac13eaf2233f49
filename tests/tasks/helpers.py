"""Task models with non-trivial adapters, masks, norms and heads, shared by the task tests."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

import spa
from spa.pruning import apply_masks, channel_groups, compute_masks
from spa.tasks import save_task

from ..conftest import ConvNet


def trained_task(base: nn.Module, config, example: torch.Tensor, keep: float = 0.7) -> nn.Module:
    """Adapt a copy of `base` and change everything a training run would change.

    Adapter factors get large random values, masks drop about `1 - keep` of the channels (set
    by hand: save these with `keep_masks=True`), fine-pruned weights move, norms and the head
    change and batch-norm statistics are updated by a train-mode forward pass.
    """
    model = spa.adapt(copy.deepcopy(base), config)
    for _, layer in spa.adapter_layers(model):
        for name in layer.adapter_parameter_names():
            nn.init.normal_(getattr(layer, name), std=0.3)
        for mask in layer.masks().values():
            mask.copy_(torch.rand(mask.shape) < keep)
            mask[0] = True
        if getattr(layer, "rank", None) == 0:
            with torch.no_grad():
                layer.base.weight.add_(torch.randn_like(layer.base.weight))
    model.train()
    with torch.no_grad():
        model(example)
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.LayerNorm):
                module.weight.add_(0.1 * torch.randn_like(module.weight))
                module.bias.add_(0.1 * torch.randn_like(module.bias))
        head = model.get_submodule(model.spa_report.head[0])
        head.weight.add_(torch.randn_like(head.weight))
    return model.eval()


def pruned_task(base: nn.Module, example: torch.Tensor, config, density: float) -> nn.Module:
    """`base` adapted, pruned through its channel groups (random scores), adapters non-zero."""
    model = spa.adapt(copy.deepcopy(base), config)
    groups = channel_groups(model, (example,))
    scores = {i: torch.rand(group.size) for i, group in enumerate(groups)}
    apply_masks(model, compute_masks(groups, scores, density))
    for _, layer in spa.adapter_layers(model):
        for name in layer.adapter_parameter_names():
            nn.init.normal_(getattr(layer, name), std=0.3)
    return model.eval()


def saved_tasks(directory: Path, **save_options) -> tuple:
    """A `ConvNet` base, an example batch and two trained tasks of it saved in `directory`:
    "a" (SPLoRA, rank 2) and "b" (fine-pruning); returns (base, example, paths, models)."""
    base = ConvNet().eval()
    example = torch.randn(2, 4, 6, 6)
    paths, models = {}, {}
    for name, config in (("a", spa.SPLoRAConfig(rank=2)), ("b", spa.FinePruningConfig())):
        models[name] = trained_task(base, config, example)
        paths[name] = directory / f"{name}.safetensors"
        save_task(models[name], paths[name], base_model=base, keep_masks=True, **save_options)
    return base, example, paths, models


def outputs(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    """Eval-mode outputs without autograd."""
    with torch.no_grad():
        return model.eval()(example)
