"""`save_task`: write what a compacted task model changed relative to its base into a bundle.

The writer only writes: compaction (`spa.compacted` / `spa.compact`), accounting
(`spa.accounting`), density and fingerprints (`spa.tasks.fingerprint`) come from their own
modules; adapter layers are written by their kind's codec (`AdapterKind.codec`). Steps: check
the inputs, record the layers and the modules (`spa.tasks.save_layers`), assemble the metadata
(`spa.tasks.save_metadata`), write atomically (`spa.tasks.format.write_bundle`).

Precision: float32 storage is lossless. `torch.float16` rounds every stored value with a
relative error of at most 2**-11 (about 4.9e-4; values below 6.1e-5 in magnitude, such as
freshly initialised adapter factors, keep an absolute error of at most 2**-25 and values above
65504 overflow); `torch.bfloat16` keeps float32's range with a relative error of at most 2**-8
(about 3.9e-3). Loaded weights then differ from the trained ones by these amounts on the stored
entries (the base weights themselves stay exact).

`norm_statistics="exact"` stores BatchNorm weight, bias, running mean/variance and batch count
as they are, so bundle + base reproduce the trained model bit for bit (DESIGN invariant 3);
"folded" stores each changed eval-mode BatchNorm as its per-channel scale and shift (2 values
per channel, the count of its learned parameters), an inference model whose outputs match to
about 1 float32 ulp, which keeps bundles within 5% of 4 x dParams.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from spa._checks import require_module
from spa.accounting import learned_parameters
from spa.adapters.density import layers_density
from spa.adapters.protocols import is_adapted
from spa.codec.writer import BundleWriter
from spa.deploy.compacted import has_module_masks, has_pruned_channels
from spa.errors import ConfigError
from spa.tasks.expert_view import split_view
from spa.tasks.fingerprint import describe_architecture, fingerprint, structure_fingerprint
from spa.tasks.format import STORAGE_DTYPES, Bundle, write_bundle
from spa.tasks.runnable import check_runnable
from spa.tasks.save_layers import NormStatistics, check_structure, record_layers, record_modules
from spa.tasks.save_metadata import (
    BundleOptions,
    TaskFacts,
    adapter_description,
    bundle_metadata,
    unchanged_needed,
)
from spa.tasks.signing import PrivateKeySource, signer

logger = logging.getLogger(__name__)


def _check_inputs(
    model: nn.Module, base_model: nn.Module, options: BundleOptions, keep_masks: bool
) -> None:
    """Refuse invalid options, an adapted base and a model that is not compacted."""
    if options.dtype not in STORAGE_DTYPES.values():
        raise ConfigError(
            f"save_task: dtype must be one of {list(STORAGE_DTYPES)}, got {options.dtype}"
        )
    if options.norm_statistics not in ("folded", "exact"):
        raise ConfigError(
            "save_task: norm_statistics must be 'folded' or 'exact', got "
            f"{options.norm_statistics!r}"
        )
    if is_adapted(base_model):
        raise ConfigError(
            "save_task: base_model contains adapter layers; pass the plain base model the task "
            "was adapted from (e.g. keep a copy before calling spa.adapt)"
        )
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


def save_task(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    base_model: nn.Module,
    dtype: torch.dtype = torch.float32,
    norm_statistics: NormStatistics = "exact",
    model_name: str | None = None,
    model_options: dict[str, Any] | None = None,
    keep_masks: bool = False,
    signing_key: PrivateKeySource | None = None,
) -> Bundle:
    """Write the compacted task `model` as a bundle of what it changed relative to `base_model`.

    Args:
        model: the trained task model, compacted (`spa.compacted(model)`); SPLoPA block
            masks are stored as masks.
        path: destination file (conventionally `*.safetensors`), written atomically.
        base_model: the plain base model the task was adapted from (same module tree).
        dtype: storage dtype of floating-point tensors (see the module docstring).
        norm_statistics: "exact" or "folded" BatchNorm statistics (see the module docstring).
        model_name: optional `spa.models` registry name of the architecture, for the metadata.
        model_options: optional JSON keyword arguments rebuilding the base with
            `spa.models.create_model(model_name, **model_options)`.
        keep_masks: store the channel masks of a model that is not compacted as they are (the
            loaded model keeps zeroed channels) instead of refusing it.
        signing_key: optional Ed25519 private key (object, PEM path or bytes) to sign with.

    Returns:
        The written `Bundle` (metadata, tensors, size on disk).

    Raises:
        ConfigError: for a model that is not compacted (call `spa.compacted(model)` first), an
            adapted `base_model`, module trees that differ, or an invalid option.
    """
    require_module(model, "save_task: model")
    require_module(base_model, "save_task: base_model")
    names = {"model_name": model_name, "model_options": model_options}
    options = BundleOptions(dtype=dtype, norm_statistics=norm_statistics, **names)
    _check_inputs(model, base_model, options, keep_masks)
    sign = None if signing_key is None else signer(signing_key)
    base_model = split_view(base_model)  # 3-D experts as spa.adapt split them
    base_modules = dict(base_model.named_modules())
    check_structure(model, base_modules)
    check_runnable(model)  # head shapes: a bundle that would fail in the model's head reshape
    writer = BundleWriter(dtype=dtype)
    with torch.no_grad():
        layers, adapters = record_layers(model, base_modules, writer)
        modules = record_modules(model, base_modules, writer, norm_statistics)
    adapter = adapter_description(model)
    modules += unchanged_needed(base_model, adapter, layers, modules)
    facts = TaskFacts(
        architecture=describe_architecture(base_model),
        base_fingerprint=fingerprint(base_model),
        base_structure=structure_fingerprint(base_model),
        density=layers_density(adapters),
        learned=learned_parameters(model),
    )
    metadata = bundle_metadata(options, facts, adapter, writer, (layers, modules))
    bundle = Bundle(metadata=metadata, tensors=writer.tensors)
    size = write_bundle(path, bundle, sign=sign)
    logger.info("saved task bundle %s (%d bytes, dParams %d)", path, size, facts.learned.total)
    return bundle
