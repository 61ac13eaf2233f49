"""Standalone exports of a task model: safetensors with an architecture description, or ONNX.

An exported safetensors file holds the full state dict of the fused, compacted task model and,
in its metadata (`spa_export`, one JSON string), how to rebuild the module tree without spa's
adapter code: the architecture (a `spa.models` registry name with keyword arguments, or a
`transformers` class with its config) and the shape attributes that differ from that freshly
built architecture (`in_features`, `num_features`, `groups`, ...). `load_exported` rebuilds it.
"""

from __future__ import annotations

import inspect
import logging
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from spa.codec.records import (
    apply_attribute_changes,
    attribute_changes,
    check_attribute_changes,
    direct_tensors,
    set_tensor,
)
from spa.errors import BundleError, ConfigError
from spa.tasks.format import canonical_json, read_metadata, write_atomic

EXPORT_FORMAT = "spa-exported-model"
EXPORT_VERSION = 1
_EXPORT_KEY = "spa_export"


def build_architecture(architecture: dict[str, Any]) -> nn.Module:
    """Build a randomly initialised model from an architecture description.

    Args:
        architecture: `{"source": "spa.models", "name": ..., "kwargs": {...}}` or
            `{"source": "transformers", "class": ..., "config": {...}}`.

    Returns:
        The model.

    Raises:
        ConfigError: for an unknown source, model name or class.
    """
    source = architecture.get("source")
    if source == "spa.models":
        from spa.models import create_model

        return create_model(architecture["name"], **architecture.get("kwargs", {}))
    if source == "transformers":
        from spa.models.loading import build_transformers

        return build_transformers(str(architecture.get("class")), architecture.get("config", {}))
    raise ConfigError(
        f"unknown architecture source {source!r}; expected 'spa.models' or 'transformers'"
    )


def describe_transformers(model: nn.Module) -> dict[str, Any]:
    """The architecture description of a `transformers` model (class name and config)."""
    return {
        "source": "transformers",
        "class": type(model).__name__,
        "config": model.config.to_dict(),
    }


def export_model(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    architecture: dict[str, Any],
    reference: nn.Module,
) -> int:
    """Write `model` (plain layers, e.g. from `load_task`) as a standalone safetensors file.

    Args:
        model: the fused, compacted task model.
        path: destination file, written atomically.
        architecture: how to build the module tree (see `build_architecture`).
        reference: a model built from `architecture` (e.g. the base model); shape attributes of
            `model` that differ from it are recorded.

    Returns:
        Bytes written.

    Raises:
        ConfigError: if the module trees of `model` and `reference` differ.
    """
    reference_modules = dict(reference.named_modules())
    changes, removed = {}, []
    for name, module in model.named_modules():
        base = reference_modules.get(name)
        if base is None or type(base) is not type(module):
            raise ConfigError(
                f"export: module {name!r} ({type(module).__name__}) has no counterpart of the "
                "same type in the reference architecture"
            )
        if attributes := attribute_changes(module, base):
            changes[name] = attributes
        removed += [
            f"{name}.{key}" if name else key
            for key, value in module._parameters.items()
            if value is None and base._parameters.get(key) is not None
        ]
    tensors = {
        key: value.detach().cpu().contiguous().clone() for key, value in model.state_dict().items()
    }
    document = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "architecture": architecture,
        "modules": changes,
        "removed": removed,
    }
    data = safetensors.torch.save(tensors, metadata={_EXPORT_KEY: canonical_json(document)})
    write_atomic(path, data)
    return len(data)


def load_exported(path: str | os.PathLike) -> nn.Module:
    """Rebuild a model written by `export_model` (no adapter code involved), in eval mode.

    Args:
        path: the exported `.safetensors` file.

    Returns:
        The model with the exported weights.

    Raises:
        BundleError: if the file is damaged, not an export, or does not fit its architecture.
    """
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise BundleError(f"{source}: cannot read ({error.strerror})") from None
    try:
        document = read_metadata(data, source, key=_EXPORT_KEY, format_name=EXPORT_FORMAT)
        tensors = safetensors.torch.load(data)
    except BundleError:
        raise
    except Exception as error:
        raise BundleError(f"{source}: damaged export ({error})") from None
    model = build_architecture(document["architecture"])
    modules = dict(model.named_modules())
    for name, attributes in document.get("modules", {}).items():
        module = modules.get(name)
        problem = "missing" if module is None else check_attribute_changes(module, attributes)
        if problem:
            raise BundleError(f"{source}: module {name!r}: {problem}")
        apply_attribute_changes(module, attributes)
    for key in document.get("removed", []):
        owner, _, attr = key.rpartition(".")
        set_tensor(modules[owner], attr, "parameter", None)
    expected = set(model.state_dict())
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise BundleError(
            f"{source}: tensors do not fit the architecture: missing {missing[:5]}, "
            f"unexpected {extra[:5]}"
        )
    for key, tensor in tensors.items():
        owner, _, attr = key.rpartition(".")
        kind = direct_tensors(modules[owner])[attr][0]
        set_tensor(modules[owner], attr, kind, tensor)
        if kind == "parameter":
            getattr(modules[owner], attr).requires_grad_(True)
    return model.eval()


class _TensorOutput(nn.Module):
    """A model whose forward returns one tensor: `transformers` models run without a KV cache
    (which the exporter cannot trace) and give their `logits` (else their first output)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.options = (
            {"use_cache": False}
            if "use_cache" in inspect.signature(model.forward).parameters
            else {}
        )

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        output = self.model(*inputs, **self.options)
        if isinstance(output, torch.Tensor):
            return output
        if isinstance(output, Mapping) and "logits" in output:
            return output["logits"]
        return output[0]


def export_onnx(
    model: nn.Module, path: str | os.PathLike, example_inputs: tuple, *, dynamic_batch: bool = True
) -> None:
    """Write `model` as ONNX (TorchScript-based exporter, opset default), atomically.

    A `transformers` model is exported with `torch.export` (its attention-mask code does not
    trace with the TorchScript exporter), without its KV cache and with its logits as the one
    output; the batch and, for token ids, the sequence length are dynamic. Models of 2 GB or more
    keep their weights in `<path>.data` beside the file (ONNX's protobuf limit).

    Args:
        model: the fused, compacted task model.
        path: destination `.onnx` file.
        example_inputs: positional inputs of one forward pass (their shapes are traced).
        dynamic_batch: make the first dimension of every input and output dynamic.
    """
    names = [f"input_{i}" if i else "input" for i in range(len(example_inputs))]
    wrapped = _TensorOutput(model.eval())
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        temporary = Path(scratch) / target.name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # legacy exporter: offline, fast
            warnings.simplefilter("ignore", UserWarning)
            if getattr(getattr(model, "config", None), "model_type", None):
                _export_transformers(wrapped, tuple(example_inputs), temporary, names)
            else:
                axes = {name: {0: "batch"} for name in names + ["output"]}
                torch.onnx.export(
                    wrapped,
                    tuple(example_inputs),
                    str(temporary),
                    dynamo=False,
                    input_names=names,
                    output_names=["output"],
                    dynamic_axes=axes if dynamic_batch else None,
                )
        for written in Path(scratch).iterdir():  # the model, and any external weights file
            os.replace(written, target.parent / written.name)


def _export_transformers(wrapped: nn.Module, inputs: tuple, path: Path, names: list[str]):
    """`torch.onnx.export(dynamo=True)` with dynamic batch and token-sequence axes; its
    exporter's and optimiser's progress logs are kept to errors."""
    dynamic = torch.export.Dim.DYNAMIC
    # torch.export fixes axes of size 1: trace a batch of two.
    inputs = tuple(torch.cat([x, x]) if x.shape[0] == 1 else x for x in inputs)
    shapes = tuple(
        {0: dynamic, **({1: dynamic} if x.dim() == 2 and not x.is_floating_point() else {})}
        for x in inputs
    )
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            wrapped,
            inputs,
            str(path),
            dynamo=True,
            input_names=names,
            output_names=["output"],
            dynamic_shapes=(shapes,),
            verbose=False,
            # One self-contained file below ONNX's 2 GB limit, else weights in `<path>.data`.
            external_data=sum(p.numel() * p.element_size() for p in wrapped.parameters()) > 2**31,
        )
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
