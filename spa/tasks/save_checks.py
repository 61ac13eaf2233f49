"""Can this task model be written as a bundle over this base? One call: `check_save`.

`spa.save_task` writes what a compacted task model changed relative to the base it was adapted
from. Before anything is written, `check_save` refuses an adapted base, a model that is not
compacted (naming `spa.compacted`), module trees that differ and attention projections that keep
parts of heads (`spa.tasks.runnable`), and pairs every module of the task model with the base
module it is recorded against.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from spa.adapters.protocols import AdapterLayer, is_adapted
from spa.adapters.transposed import linear_view
from spa.deploy.compacted import has_module_masks, has_pruned_channels
from spa.errors import ConfigError
from spa.tasks.expert_view import split_view
from spa.tasks.runnable import check_runnable


@dataclass(frozen=True)
class ModulePair:
    """A module of the task model (outside adapter layers) and the base module it changes.

    Attributes:
        path: the module's dotted name in both models.
        module: the task model's module (an adapter layer, or any other module).
        base: the base's module; for an adapter layer over a transformers `Conv1D`, its Linear
            view (sharing the tensors).
    """

    path: str
    module: nn.Module
    base: nn.Module


def _check_compacted(model: nn.Module, keep_masks: bool) -> None:
    """Refuse a model with masked channels (unless `keep_masks`) or with hook masks."""
    if not has_pruned_channels(model):
        return
    if not keep_masks:
        raise ConfigError(
            "save_task: the model has masked channels, it is not compacted; call "
            "spa.compacted(model) first (or spa.compact(model) in place)"
        )
    if has_module_masks(model):
        raise ConfigError(
            "save_task: the model has spa.pruning hook masks on norm/head layers, which a "
            "bundle cannot hold; call spa.compacted(model) first"
        )


def _top_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """`(name, module)` of every module that is not inside an adapter layer."""
    found, covered = [], []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in covered):
            continue
        if isinstance(module, AdapterLayer):
            covered.append(name + ".")
        found.append((name, module))
    return found


def _pair(name: str, module: nn.Module, base: nn.Module | None) -> ModulePair:
    """`module` with its base module, refused if the base has none of its type there."""
    same_type = base is not None and type(base) is type(module)
    if isinstance(module, AdapterLayer):
        base = linear_view(base)
        # Compaction rebuilds a conv/linear subclass as the plain torch type it derives from.
        same_type = base is not None and isinstance(base, type(module.base))
    if not same_type:
        inner = module.base if isinstance(module, AdapterLayer) else module
        found = "missing" if base is None else f"a {type(base).__name__}"
        raise ConfigError(
            f"save_task: module {name or '<root>'!r} is a {type(inner).__name__} in the task "
            f"model but {found} in the base model; a bundle records changed tensors and "
            "shapes only, so the task model must have the base's module tree"
        )
    return ModulePair(name, module, base)


def _module_pairs(model: nn.Module, base_model: nn.Module) -> list[ModulePair]:
    """Every module of `model` outside adapter layers with its base module; trees must match.

    Raises:
        ConfigError: naming the first module that differs or the base modules that are missing.
    """
    base_modules = dict(split_view(base_model).named_modules())  # 3-D experts split, as adapt
    pairs = [_pair(name, module, base_modules.get(name)) for name, module in _top_modules(model)]
    missing = sorted(set(base_modules) - {name for name, _ in model.named_modules()})
    if missing:
        raise ConfigError(
            f"save_task: base module(s) {missing[:5]} are missing from the task model; pass the "
            "base model the task was adapted from"
        )
    return pairs


def check_save(model: nn.Module, base_model: nn.Module, keep_masks: bool) -> list[ModulePair]:
    """Refuse what cannot be written; pair the task model's modules with the base's.

    Args:
        model: the task model about to be written.
        base_model: the plain base model it was adapted from.
        keep_masks: masked channels are stored as masks instead of refused.

    Returns:
        The task model's modules outside adapter layers, in module order, with their base
        modules.

    Raises:
        ConfigError: for an adapted `base_model`, a model that is not compacted (call
            `spa.compacted(model)` first), module trees that differ, or projections that keep
            parts of attention heads.
    """
    if is_adapted(base_model):
        raise ConfigError(
            "save_task: base_model contains adapter layers; pass the plain base model the task "
            "was adapted from (e.g. keep a copy before calling spa.adapt)"
        )
    _check_compacted(model, keep_masks)
    pairs = _module_pairs(model, base_model)
    check_runnable(model)  # head shapes: a bundle that would fail in the model's head reshape
    return pairs
