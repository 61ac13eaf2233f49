"""`load_task(..., trainable=True)`: a bundle reloaded as the adapted, masked model, to train on.

The bundle holds a compacted task; training continues on the full-size adapted model instead:
`spa.task_model` adapts a copy of the base that shares its frozen tensors with the recorded
adapter config, each adapter layer's codec (`LayerCodec.restore`) writes its entry back (masks
from the kept indices, stored factors / weights at the kept positions), and every changed module
tensor is scattered back to its kept positions. Norms, the head and every other module a removed
channel passes through get their hook masks as pruning set them (`spa.pruning.apply_masks` with
the channel groups of the restored layers, traced on `example_inputs` unless the family is
described), so the masked model computes what the compacted one does. Which positions a
compacted module tensor kept is read off compaction itself: the positions it records
(`spa.codec.kept`) on a copy holding `meta` placeholders, or, for a tensor narrowed on two
axes, the full-size tensor tagged with its flat indices (float64, exact) and compacted; so the
mapping is compaction's own by construction. Parameters at dropped positions are zero, buffers
keep the base's values there (the hook masks make both irrelevant to the output).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from spa.adapters.protocols import AdapterLayer, adapter_layers
from spa.adapters.registry import ADAPTER_KINDS
from spa.adapters.sharing import shared_copy, task_model
from spa.codec.entries import bundle_error
from spa.codec.records import direct_tensors, recorded, replace_parameter, set_tensor
from spa.deploy.compacted import compacted
from spa.errors import ConfigError, SpaWarning
from spa.families import describe
from spa.pruning import apply_masks, channel_groups, compute_masks
from spa.tasks.codecs import codec_for, entry_kind
from spa.tasks.format import Bundle

if TYPE_CHECKING:
    from spa.tasks.load import TaskPlan


def recorded_config(bundle: Bundle) -> Any:
    """The adapter config the bundle's metadata records, rebuilt as its config object.

    Raises:
        BundleError: for a bundle without an adapter record or of an unknown config type.
    """
    adapter = bundle.metadata.get("adapter")
    if not adapter:
        raise bundle_error(bundle, "records no adapter config; it cannot be loaded for training")
    types = {ADAPTER_KINDS.get(n).config_type.__name__: ADAPTER_KINDS.get(n) for n in ADAPTER_KINDS}
    kind = types.get(adapter.get("type"))
    if kind is None:
        raise bundle_error(bundle, f"unknown adapter config type {adapter.get('type')!r}")
    names = {f.name: f for f in dataclasses.fields(kind.config_type)}
    values = {}
    for key, value in adapter["config"].items():
        if key in names and isinstance(value, list):  # JSON lists were tuples
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        values[key] = value
    return kind.config_type(**values)


def _check_trainable(plan: TaskPlan) -> None:
    """Refuse a bundle whose stored form cannot train: folded norm statistics."""
    for entry, _ in plan.modules:
        if entry.get("folded_norm"):
            raise bundle_error(
                plan.bundle,
                f"module {entry['path']!r} stores folded norm statistics, which cannot train; "
                "save the task with norm_statistics='exact' to continue training",
            )


def _restore_layers(model: nn.Module, plan: TaskPlan) -> None:
    """Write every layer entry into its adapted layer through the kind's codec."""
    for layer_plan in plan.layers:
        path, kind = layer_plan.entry["path"], entry_kind(layer_plan.entry)
        restore = codec_for(kind).restore
        if restore is None:
            raise bundle_error(plan.bundle, f"adapter kind {kind!r} cannot be loaded for training")
        layer = model.get_submodule(path)
        if not isinstance(layer, AdapterLayer) or layer.kind != kind:
            found = getattr(layer, "kind", type(layer).__name__)
            raise bundle_error(
                plan.bundle,
                f"layer {path!r} is a {kind} entry, but the recorded config adapts it as {found}",
            )
        restore(layer_plan, layer)


def _mask_modules(model: nn.Module, example_inputs: Any) -> None:
    """Give every module a removed channel passes through its hook mask, as pruning did."""
    layers = [layer for _, layer in adapter_layers(model)]
    if all(bool(mask.all()) for layer in layers for mask in layer.masks().values()):
        return
    if example_inputs is None and describe(model) is None:
        raise ConfigError(
            "load_task(trainable=True): the task has pruned channels; pass example_inputs so "
            "the channel groups of the model can be traced"
        )
    groups = channel_groups(model, example_inputs)
    scores = {index: torch.zeros(group.size) for index, group in enumerate(groups)}
    with warnings.catch_warnings():  # density 1 keeps what is kept: "overshot" by design
        warnings.simplefilter("ignore", SpaWarning)
        masks = compute_masks(groups, scores, 1.0)  # the removed channels only
    apply_masks(model, masks)


def _kept_positions(model: nn.Module, wanted: list[tuple[str, str]]) -> dict:
    """`(path, key) -> (axis, kept base positions)` of module tensors compaction narrows, read
    off compaction's records (`spa.codec.kept`) on a copy of `model` whose narrowed tensors
    and adapter layer weights are `meta` placeholders (no weight is sliced or allocated); a
    tensor narrowed on two axes gets its flat kept indices instead (`_flat_positions`)."""
    ghost = shared_copy(model)  # its own module tables: the placeholders never reach `model`
    for _, layer in adapter_layers(ghost):
        for key, tensor in list(layer.base._parameters.items()):
            if tensor is not None:
                set_tensor(layer.base, key, "parameter", torch.empty_like(tensor, device="meta"))
    for path, key in wanted:
        module = ghost.get_submodule(path)
        kind, tensor = direct_tensors(module)[key]
        set_tensor(module, key, kind, torch.empty_like(tensor, device="meta"))
    small = compacted(ghost)
    kept = {(path, key): recorded(small.get_submodule(path), key) for path, key in wanted}
    rest = [found for found, record in kept.items() if record is None]
    return {**kept, **(_flat_positions(model, rest) if rest else {})}


def _flat_positions(model: nn.Module, wanted: list[tuple[str, str]]) -> dict:
    """`(path, key) -> flat kept indices` of module tensors compaction narrows, read off a
    compacted copy of `model` whose tensors `wanted` hold their flat indices."""
    tagged = shared_copy(model, frozen_only=True)
    for path, key in wanted:
        module = tagged.get_submodule(path)
        kind, tensor = direct_tensors(module)[key]
        tag = torch.arange(tensor.numel(), dtype=torch.float64, device=tensor.device)
        set_tensor(module, key, kind, tag.view(tensor.shape))
    small = compacted(tagged)
    kept = {}
    for path, key in wanted:
        tag = direct_tensors(small.get_submodule(path))[key][1].detach().flatten()
        kept[(path, key)] = tag
    return kept


def _restore_modules(model: nn.Module, plan: TaskPlan) -> None:
    """Install every module entry's stored tensors, scattered to their kept positions."""
    bundle = plan.bundle
    changes = []
    for entry, tensors in plan.modules:
        module = model.get_submodule(entry["path"])
        for key in entry.get("tensors", {}):
            changes.append((entry["path"], key, tensors[key]))
        for key in entry.get("none", []):
            replace_parameter(module, key, None)
    existing = {(p, k): direct_tensors(model.get_submodule(p))[k] for p, k, _ in changes}
    narrowed = [(p, k) for p, k, stored in changes if existing[(p, k)][1].shape != stored.shape]
    kept = _kept_positions(model, narrowed) if narrowed else {}
    for path, key, stored in changes:
        kind, old = existing[(path, key)]
        value = stored.to(old.device, old.dtype)
        if (path, key) in kept:
            value = _scattered(bundle, path, key, kind, old, value, kept[(path, key)])
        module = model.get_submodule(path)
        if kind == "parameter":
            replace_parameter(module, key, value)
        else:
            set_tensor(module, key, kind, value)


def _scattered(bundle, path: str, key: str, kind: str, old, value, kept) -> torch.Tensor:
    """The full-size tensor: `value` at its kept positions, zero (a parameter) or the base's
    values (a buffer) elsewhere."""
    if isinstance(kept, tuple):  # (axis, kept positions on it)
        axis, index = kept
        shape = (*old.shape[:axis], len(index), *old.shape[axis + 1 :])
        fits = tuple(value.shape) == shape
    else:  # flat indices
        index = kept
        fits = index.numel() == value.numel() and not bool((index != index.round()).any())
    if not fits:
        raise bundle_error(
            bundle, f"module {path!r}: tensor {key!r} does not match the compacted layout"
        )
    full = torch.zeros_like(old) if kind == "parameter" else old.detach().clone()
    if isinstance(kept, tuple):
        full.index_copy_(axis, index.to(full.device), value)
    else:
        full.view(-1)[index.long()] = value.flatten()
    return full


def build_trainable(base_model: nn.Module, plan: TaskPlan, example_inputs: Any = None) -> nn.Module:
    """The full-size adapted task model of a validated plan, ready to train.

    It shares the base's frozen tensors (never written: every trained tensor has its own
    storage); only the recorded config's trainable parameters require a gradient.
    `example_inputs` (a batch) traces the channel groups of a pruned task whose family is not
    described (`spa.families.describe`).

    Raises:
        BundleError: for a bundle without an adapter config, a kind whose codec cannot restore
            layers (named), folded norm statistics, or entries the config does not adapt.
        ConfigError: for a pruned task of an undescribed family without `example_inputs`.
    """
    _check_trainable(plan)
    model = task_model(base_model, recorded_config(plan.bundle))
    with torch.no_grad():
        _restore_layers(model, plan)
    _mask_modules(model, example_inputs)
    with torch.no_grad():
        _restore_modules(model, plan)
    return model.eval()
