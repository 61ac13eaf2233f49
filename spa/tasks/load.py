"""`load_task`: rebuild a fused, compacted task model from a bundle and the shared base weights.

Loading happens in two steps. `plan_task` validates the whole bundle against the base model
(fingerprint, layers, modules, every shape) without building anything; `build_task` then makes a
structural copy of the base that shares all its tensors and replaces only what the task changed.
A bundle that fails validation therefore never touches any model.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from spa.adapters.base import is_adapted
from spa.adapters.transposed import as_linear, is_transposed_linear, linear_view
from spa.errors import BundleError, ConfigError, SpaWarning
from spa.tasks._entries import bundle_error, expect
from spa.tasks.codecs import codec_for, entry_kind
from spa.tasks.fingerprint import describe_architecture, fingerprint
from spa.tasks.format import Bundle, read_bundle
from spa.tasks.modules import (
    apply_attribute_changes,
    check_attribute_changes,
    direct_tensors,
    set_tensor,
    structural_copy,
)


@dataclass
class TaskPlan:
    """A bundle validated against a base model: what to build, layer by layer."""

    bundle: Bundle
    layers: list[Any] = field(default_factory=list)  # plans with build() -> (weight, bias)
    modules: list[tuple[dict[str, Any], dict[str, torch.Tensor]]] = field(default_factory=list)


def check_fingerprint(
    base_model: nn.Module, bundle: Bundle, base_fingerprint: str | None = None, strict: bool = True
) -> None:
    """Refuse (or, with `strict=False`, warn about) a base whose fingerprint is not the bundle's.

    Raises:
        BundleError: naming both fingerprints and both architectures.
    """
    actual = base_fingerprint or fingerprint(base_model)
    expected = bundle.metadata.get("base_fingerprint")
    if actual == expected:
        return
    message = (
        f"{bundle.path}: the bundle was trained against base {expected} "
        f"({bundle.metadata.get('architecture')}), but the given base is {actual} "
        f"({describe_architecture(base_model)}); load the base weights the task was trained from"
    )
    if strict:
        raise BundleError(message)
    warnings.warn(message, SpaWarning, stacklevel=3)


def _check_tensor_name(bundle: Bundle, path: str, key: str, module: nn.Module) -> None:
    if not key.isidentifier() or key.startswith("_") or key in module._modules:
        raise bundle_error(bundle, f"module {path!r}: invalid tensor name {key!r}")


def _is_channel_slice(stored: torch.Tensor, base: torch.Tensor) -> bool:
    """True if `stored` is a per-channel vector of the base narrowed on its one channel axis.

    Channel pruning slices bare per-channel parameters (e.g. ConvNeXt's layer scale) with their
    group without changing any attribute of the module that owns them (issue 11).
    """
    axes = [d for d, size in enumerate(base.shape) if size > 1]
    if stored.dim() != base.dim() or len(axes) != 1:
        return False
    changed = [d for d in range(base.dim()) if stored.shape[d] != base.shape[d]]
    return changed == axes and 1 <= stored.shape[axes[0]] < base.shape[axes[0]]


def _plan_module(
    bundle: Bundle, entry: dict[str, Any], base_modules: dict[str, nn.Module]
) -> dict[str, torch.Tensor]:
    path = entry.get("path")
    module = base_modules.get(path)
    if module is None:
        raise bundle_error(
            bundle,
            f"module {path!r} is missing from the base model; the bundle was made for "
            f"{bundle.metadata.get('architecture')!r}",
        )
    attributes = entry.get("attributes", {})
    problem = check_attribute_changes(module, attributes)
    if problem:
        raise bundle_error(bundle, f"module {path!r}: {problem}")
    existing = direct_tensors(module)
    tensors = {}
    for key, (kind, dtype) in entry.get("tensors", {}).items():
        _check_tensor_name(bundle, path, key, module)
        if kind not in ("parameter", "buffer") or not isinstance(
            getattr(torch, dtype, None), torch.dtype
        ):
            raise bundle_error(bundle, f"module {path!r}: bad tensor record {key}={[kind, dtype]}")
        stored = bundle.tensors.get(f"modules.{path}.{key}")
        if stored is None:
            raise bundle_error(bundle, f"tensor 'modules.{path}.{key}' is missing; damaged file")
        if key in existing and not attributes and stored.shape != existing[key][1].shape:
            if not _is_channel_slice(stored, existing[key][1]):
                expect(bundle, f"modules.{path}.{key}", tuple(existing[key][1].shape))
        tensors[key] = stored
    for key in entry.get("none", []):
        if module._parameters.get(key) is None:
            raise bundle_error(bundle, f"module {path!r} has no parameter {key!r} to remove")
    if entry.get("folded_norm"):
        if not (isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine):
            raise bundle_error(bundle, f"module {path!r}: folded norm needs an affine BatchNorm")
        channels = attributes.get("num_features", module.num_features)
        tensors["folded"] = expect(bundle, f"modules.{path}.folded", (2, channels))
    return tensors


def plan_task(
    base_model: nn.Module,
    bundle: Bundle,
    *,
    base_fingerprint: str | None = None,
    strict_fingerprint: bool = True,
) -> TaskPlan:
    """Validate `bundle` against `base_model` completely, building nothing.

    Args:
        base_model: the plain base model.
        bundle: a bundle from `read_bundle`.
        base_fingerprint: the base's fingerprint if already known (skips re-hashing).
        strict_fingerprint: refuse a foreign base (default); False only warns, and the
            structural checks still apply.

    Returns:
        The `TaskPlan` to pass to `build_task`.

    Raises:
        BundleError: for a foreign base, a missing layer or module, or a shape mismatch.
        ConfigError: if `base_model` is itself adapted.
    """
    if is_adapted(base_model):
        raise ConfigError("load_task: the base model contains adapter layers; pass the plain base")
    check_fingerprint(base_model, bundle, base_fingerprint, strict_fingerprint)
    base_modules = dict(base_model.named_modules())
    plan = TaskPlan(bundle)
    try:
        for entry in bundle.metadata.get("layers", []):
            if not isinstance(entry.get("path"), str) or not isinstance(entry_kind(entry), str):
                raise bundle_error(bundle, f"unknown layer entry {entry!r}")
            planner = codec_for(entry_kind(entry)).plan
            base = linear_view(base_modules.get(entry["path"]))  # Conv1D: its Linear view
            plan.layers.append(planner(bundle, entry, base))
        for entry in bundle.metadata.get("modules", []):
            plan.modules.append((entry, _plan_module(bundle, entry, base_modules)))
    except BundleError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        message = f"malformed metadata ({error!r}); re-export the bundle"
        raise bundle_error(bundle, message) from None
    return plan


def _unit_variance(like: torch.Tensor, eps: float) -> torch.Tensor:
    """A variance `v` with `v + eps == 1` exactly in `like`'s dtype, so `1 / sqrt(v + eps)` is 1."""
    variance = torch.full_like(like, 1.0) - eps
    for _ in range(4):
        error = (variance + eps) - 1
        if not bool(error.any()):
            break
        variance = torch.nextafter(variance, variance - error)
    return variance


def _apply_module(model: nn.Module, entry: dict[str, Any], tensors: dict[str, torch.Tensor]):
    module = model.get_submodule(entry["path"])
    existing = direct_tensors(module)
    device = next((t.device for _, t in existing.values()), torch.device("cpu"))
    apply_attribute_changes(module, entry.get("attributes", {}))
    for key, (kind, dtype) in entry.get("tensors", {}).items():
        set_tensor(module, key, kind, tensors[key].to(device, getattr(torch, dtype)).clone())
    for key in entry.get("none", []):
        set_tensor(module, key, "parameter", None)
    if entry.get("folded_norm"):  # eval-mode batch norm x * scale + shift, see save_task
        scale, shift = tensors["folded"].to(device, module.weight.dtype).clone()
        set_tensor(module, "weight", "parameter", scale)
        set_tensor(module, "bias", "parameter", shift)
        set_tensor(module, "running_mean", "buffer", torch.zeros_like(scale))
        set_tensor(module, "running_var", "buffer", _unit_variance(scale, module.eps))
        if module.num_batches_tracked is not None:  # private copy: never bump the base's counter
            set_tensor(module, "num_batches_tracked", "buffer", module.num_batches_tracked.clone())


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def build_task(
    base_model: nn.Module,
    plan: TaskPlan,
    finalize: Callable[[nn.Module], nn.Module] | None = None,
) -> nn.Module:
    """Materialise the task model of a validated plan.

    The result shares every unchanged parameter and buffer with `base_model` (no copy of the
    base weights); adapted layers become plain `nn.Linear` / `nn.ConvNd` layers with the fused,
    compacted weight, and changed modules get the bundle's tensors. It is returned in eval mode
    with its new tensors frozen. Do not train it in place: its shared tensors are the base's
    (use `copy.deepcopy` first).

    Args:
        base_model: the plain base model the plan was validated against.
        plan: from `plan_task`.
        finalize: applied to the built model before it is returned; the place for structural
            compaction that a bundle's tensors and attributes cannot express (e.g. removing
            empty attention heads of block-pruned BERT layers). None keeps the model as built.

    Returns:
        The task model in eval mode.
    """
    model = structural_copy(base_model)
    with torch.no_grad():
        for layer_plan in plan.layers:
            weight, bias = layer_plan.build()
            module = model.get_submodule(layer_plan.entry["path"])
            if is_transposed_linear(module):  # a transformers Conv1D becomes its Linear
                module = as_linear(module, share=True)
                _replace(model, layer_plan.entry["path"], module)
            set_tensor(module, "weight", "parameter", weight)
            set_tensor(module, "bias", "parameter", bias)
            apply_attribute_changes(module, layer_plan.entry.get("attributes", {}))
        for entry, tensors in plan.modules:
            _apply_module(model, entry, tensors)
    if finalize is not None:
        model = finalize(model)
    return model.eval()


def load_task(
    base_model: nn.Module,
    path: str | os.PathLike,
    *,
    strict_fingerprint: bool = True,
    finalize: Callable[[nn.Module], nn.Module] | None = None,
) -> nn.Module:
    """Load the task bundle at `path` onto `base_model`: the fused, compacted task model.

    The base must be the one the task was trained against (same fingerprint). The returned model
    consists of plain PyTorch layers, gives the trained task model's outputs, and shares every
    unchanged tensor with `base_model` (which is never modified). Nothing from the file is
    executed (safetensors and JSON only).

    Args:
        base_model: the plain base model with its original weights.
        path: a bundle written by `spa.save_task`.
        strict_fingerprint: refuse a base with another fingerprint (default); False only warns.
        finalize: optional post-processing of the built model, see `build_task`.

    Returns:
        The task model, in eval mode.

    Raises:
        BundleError: for a damaged, altered or truncated file, an unknown format version, a
            foreign base, a missing layer or a shape mismatch (the message names the file).
    """
    bundle = read_bundle(path)
    plan = plan_task(base_model, bundle, strict_fingerprint=strict_fingerprint)
    return build_task(base_model, plan, finalize=finalize)
