"""`load_task`: rebuild a fused, compacted task model from a bundle and the shared base weights.

Loading happens in two steps. `plan_task` validates the whole bundle against the base model
(fingerprint, layers, modules, every shape) without building anything; `build_task` then makes a
structural copy of the base that shares all its tensors and replaces only what the task changed.
A bundle that fails validation therefore never touches any model.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from spa._checks import require_module
from spa.adapters.protocols import is_adapted
from spa.adapters.transposed import as_linear, is_transposed_linear, linear_view
from spa.codec.entries import bundle_error
from spa.codec.records import (
    apply_attribute_changes,
    direct_tensors,
    set_tensor,
    structural_copy,
)
from spa.errors import BundleError, ConfigError, SpaWarning
from spa.families import describe, sliced_tensor_axes, sync_attributes
from spa.tasks.channel_slices import check_per_head
from spa.tasks.codecs import codec_for, entry_kind
from spa.tasks.expert_view import split_view
from spa.tasks.fingerprint import describe_architecture, fingerprint, structure_fingerprint
from spa.tasks.format import MASKS_TENSOR, Bundle, read_bundle, task_name_of
from spa.tasks.module_plans import plan_module
from spa.tasks.schema import (
    check_document,
    needed_modules,
    trained_groups,
)
from spa.tasks.signing import KeySource, trusted_key_set, verify_bundle
from spa.tasks.trainable import build_trainable


@dataclass
class TaskPlan:
    """A bundle validated against a base model: what to build, layer by layer."""

    bundle: Bundle
    layers: list[Any] = field(default_factory=list)  # plans with build() -> (weight, bias)
    modules: list[tuple[dict[str, Any], dict[str, torch.Tensor]]] = field(default_factory=list)
    # The base's family where its modules read counts from the shared config (Phi-3): the
    # built model's counts are synchronised from its shapes (`spa.families.sync_attributes`).
    config_family: Any = None


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


def check_structure(base_model: nn.Module, bundle: Bundle) -> None:
    """Refuse a base whose architecture (state-dict names, shapes, dtypes) is not the bundle's.

    Unlike the weight fingerprint this check is never relaxed.

    Raises:
        BundleError: naming both architectures.
    """
    expected = bundle.metadata["base_structure"]
    actual = structure_fingerprint(base_model)
    if actual != expected:
        raise bundle_error(
            bundle,
            f"the bundle was made for another architecture ({bundle.metadata['architecture']}, "
            f"structure {expected}) than the given base ({describe_architecture(base_model)}, "
            f"structure {actual}); load the base model the task was trained from",
        )


def _check_needed(bundle: Bundle, base_model: nn.Module, plan: TaskPlan) -> None:
    """Refuse a bundle that leaves out a module its declared method trains, or unused data."""
    layer_paths = [layer.entry["path"] for layer in plan.layers]
    module_paths = [entry["path"] for entry, _ in plan.modules]
    paths = layer_paths + module_paths
    if len(set(paths)) != len(paths):
        repeated = sorted({p for p in paths if paths.count(p) > 1})
        raise bundle_error(bundle, f"entries {repeated} appear more than once")
    groups, head = trained_groups(bundle.metadata)
    for name in head:
        if name not in dict(base_model.named_modules()):
            raise bundle_error(bundle, f"the declared task head {name!r} is not in the base model")
    missing = [
        name
        for name in needed_modules(base_model, groups, head, layer_paths)
        if name not in module_paths
    ]
    if missing:
        raise bundle_error(
            bundle,
            f"the bundle declares trained groups {sorted(groups)} but has no entry for module(s) "
            f"{missing[:5]}; it was altered or truncated",
        )
    stored = set(bundle.tensors) - {MASKS_TENSOR}
    stored |= {f"mask:{name}" for name, _ in bundle.metadata["masks"]}
    unused = sorted(stored - bundle.used)
    if unused:
        raise bundle_error(bundle, f"stored data {unused[:5]} is not used by any entry")


def plan_task(
    base_model: nn.Module,
    bundle: Bundle,
    *,
    base_fingerprint: str | None = None,
    strict_fingerprint: bool = True,
    trusted_keys: KeySource | Iterable[KeySource] | None = None,
) -> TaskPlan:
    """Validate `bundle` against `base_model` completely, building nothing.

    Checks, in order: the signature (with `trusted_keys`), every metadata field's type and
    range, the base's architecture, its weight fingerprint, then every layer and module entry
    against the base (shapes, dtypes, attributes, kept indices, masks), that every stored tensor
    and mask is used, and that every module the declared method trains has an entry. A plan
    that passes builds the base's architecture with every changed module's tensors consistent
    with its attributes; how channel counts chain between modules is checked by running the
    model (`TaskHost` with `example_inputs`).

    Args:
        base_model: the plain base model.
        bundle: a bundle from `read_bundle`.
        base_fingerprint: the base's fingerprint if already known (skips re-hashing).
        strict_fingerprint: refuse a foreign base (default); False only warns about other
            weights. The architecture and every structural check still apply.
        trusted_keys: Ed25519 public keys (objects, PEM paths or PEM bytes); when given, the
            bundle must carry a valid signature by one of them. None accepts unsigned bundles.

    Returns:
        The `TaskPlan` to pass to `build_task`.

    Raises:
        BundleError: for a missing or invalid signature, a malformed field, a foreign base, a
            missing layer or module, unused data, or a shape or dtype mismatch.
        ConfigError: if `base_model` is itself adapted or a trusted key cannot be loaded.
    """
    if is_adapted(base_model):
        raise ConfigError("load_task: the base model contains adapter layers; pass the plain base")
    base_model = split_view(base_model)  # 3-D experts as spa.adapt split them
    if trusted_keys is not None:
        verify_bundle(bundle, trusted_key_set(trusted_keys))
    check_document(bundle)
    check_structure(base_model, bundle)
    check_fingerprint(base_model, bundle, base_fingerprint, strict_fingerprint)
    base_modules = dict(base_model.named_modules())
    plan = TaskPlan(bundle)
    bundle.used = set()
    for entry in bundle.metadata["layers"]:
        kind = entry_kind(entry)
        if not isinstance(kind, str) or not isinstance(entry.get("path"), str):
            raise bundle_error(bundle, f"unknown layer entry {entry!r}")
        planner = codec_for(kind).plan
        base = linear_view(base_modules.get(entry["path"]))  # Conv1D: its Linear view
        plan.layers.append(planner(bundle, entry, base))
    axes = sliced_tensor_axes(base_model)
    for entry in bundle.metadata["modules"]:
        plan.modules.append((entry, plan_module(bundle, entry, base_modules, axes)))
    family = describe(base_model)
    if family is not None and family.attention.config_attributes:
        plan.config_family = family
    attention = family.attention if family is not None else None
    tables = attention and (
        attention.per_head or attention.per_kv_head or attention.optional_per_head
    )
    if tables:  # without resolving the blocks again
        check_per_head(bundle, base_model, plan.layers, plan.modules)
    _check_needed(bundle, base_model, plan)
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


def module_tensors(
    module: nn.Module,
    entry: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    narrowed: dict[tuple, torch.Tensor] | None = None,
) -> dict[str, tuple[str, torch.Tensor | None]]:
    """The tensors a validated module entry installs on base module `module`, in order.

    Returns `{key: (kind, tensor)}` with kind "parameter" or "buffer"; every tensor is new (on
    the module's device, in its declared dtype), None for a removed parameter. `module` is read,
    never changed. `narrowed` caches narrowed base tensors across the entries of one task, so a
    base tensor shared by two modules (a tied LM head and token embedding) stays one tensor.
    """
    existing = direct_tensors(module)
    device = next((t.device for _, t in existing.values()), torch.device("cpu"))
    installs: dict[str, tuple[str, torch.Tensor | None]] = {}
    for key, (kind, dtype) in entry.get("tensors", {}).items():
        installs[key] = (kind, tensors[key].to(device, getattr(torch, dtype)).clone())
    narrowed = {} if narrowed is None else narrowed
    for key, (kind, axis) in entry.get("narrowed", {}).items():  # kept indices of the base's
        base, indices = existing[key][1], tensors[key]
        cache_key = (id(base), axis, tuple(indices.tolist()))
        if cache_key not in narrowed:
            narrowed[cache_key] = base.detach().index_select(axis, indices.to(base.device))
        installs[key] = (kind, narrowed[cache_key])
    for key in entry.get("none", []):
        installs[key] = ("parameter", None)
    if entry.get("folded_norm"):  # eval-mode batch norm x * scale + shift, see save_task
        scale, shift = tensors["folded"].to(device, module.weight.dtype).clone()
        installs["weight"] = ("parameter", scale)
        installs["bias"] = ("parameter", shift)
        installs["running_mean"] = ("buffer", torch.zeros_like(scale))
        installs["running_var"] = ("buffer", _unit_variance(scale, module.eps))
        if module.num_batches_tracked is not None:  # private copy: never bump the base's counter
            installs["num_batches_tracked"] = ("buffer", module.num_batches_tracked.clone())
    return installs


def _apply_module(
    model: nn.Module, entry: dict[str, Any], tensors: dict[str, torch.Tensor], narrowed: dict
) -> None:
    module = model.get_submodule(entry["path"])
    installs = module_tensors(module, entry, tensors, narrowed)
    apply_attribute_changes(module, entry.get("attributes", {}))
    for key, (kind, tensor) in installs.items():
        set_tensor(module, key, kind, tensor)


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
    model = structural_copy(split_view(base_model))
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
        narrowed: dict[tuple, torch.Tensor] = {}
        for entry, tensors in plan.modules:
            _apply_module(model, entry, tensors, narrowed)
    if plan.config_family is not None:
        sync_attributes(model, plan.config_family)
    if finalize is not None:
        model = finalize(model)
    return model.eval()


def load_task(
    base_model: nn.Module,
    path: str | os.PathLike,
    *,
    strict_fingerprint: bool = True,
    finalize: Callable[[nn.Module], nn.Module] | None = None,
    trusted_keys: KeySource | Iterable[KeySource] | None = None,
    task_name: str | None = None,
    trainable: bool = False,
    example_inputs: Any = None,
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
        trusted_keys: Ed25519 public keys (objects, PEM paths or PEM bytes); when given, only a
            bundle signed by one of them, for this task, loads; the signature is checked
            before any tensor is read. None (default) accepts unsigned bundles.
        task_name: the task the signature must name (default: the file name without
            `.safetensors`, as `spa.save_task` signed it); used with `trusted_keys` only.
        trainable: instead, the full-size adapted model to continue training (see
            `spa.tasks.trainable`): the recorded kind's layers with the stored masks and
            tensors, the same outputs; `finalize` does not apply. Save it again with
            `spa.save_task(spa.compacted(model), ...)`.
        example_inputs: with `trainable`, a batch to trace the channel groups of a pruned task
            (not needed for described transformer families).

    Returns:
        The task model, in eval mode.

    Raises:
        BundleError: for a damaged, altered or truncated file, an unknown format version, a
            foreign base, a missing layer or a shape mismatch (the message names the file),
            or, with `trusted_keys`, an unsigned or wrongly signed bundle.
    """
    require_module(base_model, "load_task: base_model")
    checks = [check_document]  # every field typed before any tensor is read
    if trusted_keys is not None:  # and, first, signed for this task by a trusted key
        expected = task_name_of(path) if task_name is None else task_name
        trusted = trusted_key_set(trusted_keys)
        checks.insert(0, functools.partial(verify_bundle, trusted=trusted, task=expected))
    bundle = read_bundle(path, check=lambda described: [check(described) for check in checks])
    plan = plan_task(base_model, bundle, strict_fingerprint=strict_fingerprint)
    if trainable:
        return build_trainable(base_model, plan, example_inputs)
    return build_task(base_model, plan, finalize=finalize)
