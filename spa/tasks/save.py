"""`save_task`: write what a compacted task model changed relative to its base into a bundle.

The writer only writes: compaction (`spa.compacted` / `spa.compact`) happens before; the checks
(`spa.tasks.save_checks`) and the facts it records (accounting, density, fingerprints:
`spa.tasks.facts`) come from their own modules, one call each; adapter layers are written by
their kind's codec (`AdapterKind.codec`). Steps, each only calling further down: check the
inputs, record the layers and the modules (`spa.tasks.save_layers`), assemble the metadata
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
from spa.codec.writer import BundleWriter
from spa.tasks.facts import TaskFacts, task_facts
from spa.tasks.format import Bundle, write_bundle
from spa.tasks.save_checks import check_save
from spa.tasks.save_layers import NormStatistics, record_layers, record_modules
from spa.tasks.save_metadata import BundleOptions, bundle_metadata
from spa.tasks.signing import PrivateKeySource, signer

logger = logging.getLogger(__name__)


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
    facts: TaskFacts | None = None,
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
        facts: `spa.tasks.facts.task_facts(model, base_model)`, if the caller has it already
            (computed here otherwise).

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
    pairs = check_save(model, base_model, keep_masks)
    sign = None if signing_key is None else signer(signing_key)
    facts = task_facts(model, base_model) if facts is None else facts
    writer = BundleWriter(dtype=dtype)
    with torch.no_grad():
        entries = record_layers(pairs, writer), record_modules(pairs, writer, norm_statistics)
    metadata = bundle_metadata(options, facts, writer, entries)
    bundle = Bundle(metadata=metadata, tensors=writer.tensors)
    size = write_bundle(path, bundle, sign=sign)
    logger.info("saved task bundle %s (%d bytes, dParams %d)", path, size, facts.learned.total)
    return bundle
