"""`save_pretrained`: write a pruned `transformers` model as a directory plain `transformers` loads.

The model (adapted and masked, or a task from `load_task` / `TaskHost`) is compacted and fused
on a copy (`spa.compact`, `spa.fuse`), its config gets the new head / key-value head / FFN
counts (`spa.families.config_values`, which refuses layers of different shapes and shapes the
config cannot describe), and a model of the same `transformers` class is built from that
config, loaded strictly with the fused weights (transposed back for GPT-2's `Conv1D`; split
experts stacked back into 3-D tensors, `spa.tasks.stacked_experts`) and compared with the
input model on a small input. The
directory (`config.json`, `model.safetensors`, ...) is written by `transformers`' own
`save_pretrained` into a temporary directory beside the destination, loaded back with
`from_pretrained` and compared again, and only then renamed into place: a refused or failed
export leaves nothing behind.

Outputs are compared in float32 with a tolerance that follows the model's dtype. Buffers that
are not saved (rotary frequencies) are recomputed by `transformers` when it loads a directory,
in the precision its model code chooses: a model cast with `.to(torch.bfloat16)` holds them
rounded to bfloat16, which moved a TinyLlama-shaped export's logits by 2.3% on reload (issue
22). The rebuilt model therefore takes the values `transformers` computes, so the directory
reloads equal to the model checked here, and a warning says how far that moves the outputs.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError
from torch import nn

from spa._batch import call_model
from spa._files import umask as _umask
from spa.adapters.sharing import shared_copy
from spa.deploy import fuse
from spa.errors import ConfigError, SpaWarning
from spa.families import config_of, config_values, describe
from spa.pruning import compact, remove_empty_units
from spa.tasks.rebuild import rebuild


def save_pretrained(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    example_inputs: Any = None,
    overwrite: bool = False,
    tolerance: float | None = None,
    empty_units: bool = False,
) -> Path:
    """Write `model` as a `transformers` directory that `from_pretrained` loads without spa.

    This writes the WHOLE pruned model (adapters fused in, pruned channels removed), not the
    adapter: PEFT's `model.save_pretrained` saves only the adapter weights, spa's counterpart
    of that is `spa.save_task` (a bundle of what the task learned, loaded with `load_task`).

    Args:
        model: a `transformers` model (`PreTrainedModel`), adapted and masked (channel pruning
            with `ranking="local"`, and `round_to=spa.pretrained_round_to(model)` where heads
            and the hidden size are pruned), or a task model from `load_task`.
        directory: the destination; created atomically (a temporary directory beside it is
            renamed into place).
        example_inputs: a batch to compare outputs on (a tensor for the model's main input, a
            dict of keyword inputs, or a tuple); None makes a small one from the config (token
            ids or pixels).
        overwrite: replace a non-empty existing `directory`.
        tolerance: largest accepted difference of any output from `model`'s, relative to the
            largest magnitude of that output (compared in float32); None follows the model's
            dtype (`default_tolerance`: 1e-4 for float32, 2**-4 for bfloat16).
        empty_units: also remove heads and FFN neurons that block pruning emptied
            (`spa.pruning.remove_empty_units`).

    Returns:
        The written directory.

    Raises:
        ConfigError: if `model` is not a `transformers` model, `directory` exists and is not
            empty (without `overwrite`), the layers keep different shapes or the family's config
            cannot describe them (the message names the option to prune with), or the rebuilt
            model's outputs differ from `model`'s. Nothing is written then.
    """
    config = getattr(model, "config", None)
    if not getattr(config, "model_type", None) or not hasattr(model, "save_pretrained"):
        raise ConfigError(
            f"save_pretrained: {type(model).__name__} is not a transformers model (no "
            "save_pretrained and config.model_type); pass the transformers model itself"
        )
    target = Path(directory)
    _check_destination(target, overwrite)
    inputs = _example_inputs(model) if example_inputs is None else example_inputs
    if tolerance is None:
        tolerance = default_tolerance(_dtype(model))
    expected = _outputs(model, inputs)
    # The copy shares the model's weights: compaction and fusion only write new tensors.
    plain = fuse(compact(shared_copy(model, frozen_only=True)), inplace=True).eval()
    if empty_units:
        remove_empty_units(plain)
    _compare(plain, inputs, expected, tolerance, "the compacted model")
    rebuilt, recomputed = rebuild(plain, _exported_config(plain))
    if recomputed:
        expected = _with_loaded_buffers(plain, rebuilt, recomputed, inputs, expected)
    del plain
    _compare(rebuilt, inputs, expected, tolerance, "the model rebuilt from the exported config")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        rebuilt.save_pretrained(temporary)
        model_class = type(rebuilt)
        del rebuilt
        reloaded = model_class.from_pretrained(temporary, local_files_only=True)
        _compare(reloaded, inputs, expected, tolerance, f"the model loaded from {target}")
        del reloaded
        os.chmod(temporary, 0o777 & ~_umask())
        _install(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return target


def default_tolerance(dtype: torch.dtype) -> float:
    """The relative output tolerance `save_pretrained` uses for a model of `dtype`.

    1e-4 for float32 and float64 (about 840 machine epsilons); for reduced precision, 8
    machine epsilons (bfloat16: 2**-4, float16: 2**-7): every fused or compacted weight is
    rounded there, and the fused and factored forms of a 22-layer TinyLlama-shaped bfloat16
    model already differ by 2.4% (relative to the largest logit) at random initialisation.

    Args:
        dtype: the model's parameter dtype.

    Returns:
        The tolerance, relative to the largest magnitude of an output.
    """
    if not dtype.is_floating_point or torch.finfo(dtype).bits >= 32:
        return 1e-4
    return max(1e-4, 8 * torch.finfo(dtype).eps)


def _dtype(model: nn.Module) -> torch.dtype:
    parameter = next(model.parameters(), None)
    return torch.float32 if parameter is None else parameter.dtype


def _with_loaded_buffers(
    plain: nn.Module,
    rebuilt: nn.Module,
    names: list[str],
    inputs: Any,
    expected: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """`plain`'s outputs with the buffers `transformers` recomputes on load; warns how far they
    move the outputs from `expected` (the model's own)."""
    loaded = dict(rebuilt.named_buffers())
    for name in names:
        owner, _, key = name.rpartition(".")
        plain.get_submodule(owner)._buffers[key] = loaded[name]
    outputs = _outputs(plain, inputs)
    moved = max(_relative_error(outputs[key], value) for key, value in expected.items())
    kinds = sorted({f"{loaded[n].dtype}".removeprefix("torch.") for n in names})
    warnings.warn(
        f"save_pretrained: buffer(s) {names[:3]} are rounded in the model; transformers "
        f"recomputes them in {', '.join(kinds)} when it loads the export, which moves the "
        f"outputs by {moved:.2e} (relative). The export holds transformers' values; build the "
        "model in its dtype (from_pretrained / from_config with dtype=) rather than casting it "
        "with .to() to keep them equal",
        SpaWarning,
        stacklevel=3,
    )
    return outputs


def _relative_error(got: torch.Tensor, reference: torch.Tensor) -> float:
    scale = reference.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
    return float((got - reference).abs().max() / scale)


def _check_destination(target: Path, overwrite: bool) -> None:
    if target.exists() and not target.is_dir():
        raise ConfigError(f"save_pretrained: {target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ConfigError(
            f"save_pretrained: {target} exists and is not empty; pass overwrite=True "
            "(spa export --overwrite) to replace it"
        )


def _example_inputs(model: nn.Module) -> dict[str, torch.Tensor]:
    """Two small inputs for the model's main input (token ids or pixels), from a fixed seed."""
    name = getattr(model, "main_input_name", "input_ids")
    config = config_of(model)  # a composite config's (CLIP's) sub-model config with the sizes
    generator = torch.Generator().manual_seed(0)
    if name == "input_ids" and isinstance(getattr(config, "vocab_size", None), int):
        return {name: torch.randint(0, config.vocab_size, (2, 8), generator=generator)}
    channels, size = getattr(config, "num_channels", None), getattr(config, "image_size", None)
    if name == "pixel_values" and isinstance(channels, int) and isinstance(size, int):
        return {name: torch.rand(2, channels, size, size, generator=generator)}
    raise ConfigError(
        f"save_pretrained: cannot make an example {name!r} for {type(model).__name__}; pass "
        "example_inputs="
    )


def _on_device(inputs: Any, device: torch.device) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, Mapping):
        return {key: _on_device(value, device) for key, value in inputs.items()}
    if isinstance(inputs, tuple | list):
        return type(inputs)(_on_device(value, device) for value in inputs)
    return inputs


def _outputs(model: nn.Module, inputs: Any) -> dict[str, torch.Tensor]:
    """The model's floating-point output tensors (logits, hidden states), in eval mode."""
    training = model.training
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    model.eval()
    try:
        with torch.no_grad():
            output = call_model(model, _on_device(inputs, device))
    finally:
        model.train(training)
    if isinstance(output, torch.Tensor):
        items = [("output", output)]
    else:  # a ModelOutput (a mapping) or a tuple
        items = output.items() if isinstance(output, Mapping) else enumerate(output)
    return {
        str(key): value.detach().float().cpu()
        for key, value in items
        if isinstance(value, torch.Tensor) and value.is_floating_point()
    }


def _exported_config(plain: nn.Module):
    """A copy of the model's config with its new per-layer counts and weight tying."""
    config = copy.deepcopy(plain.config)
    family = describe(plain)
    if family is not None:
        target = _sized_config(plain, config)
        values = config_values(plain, family, target)
        try:
            for key, value in values.items():
                setattr(target, key, value)
            config.validate()  # transformers' own checks of the new combination
        except (ValueError, TypeError, StrictDataclassError) as error:
            cause = str(getattr(error, "__cause__", None) or error).strip().splitlines()[-1]
            raise ConfigError(
                f"save_pretrained: transformers' {type(config).__name__} refuses the pruned "
                f"shape {values} ({cause.strip()}); where the hidden size was pruned, keep it a "
                "multiple of the heads: compute_masks(..., round_to={'hidden': heads})"
            ) from None
    outputs = plain.get_output_embeddings()
    if getattr(config, "tie_word_embeddings", False) and outputs is not None:
        tied = plain.get_input_embeddings().weight
        # An adapted (fused) LM head no longer equals the input embedding it was tied to.
        config.tie_word_embeddings = outputs.weight is tied or torch.equal(outputs.weight, tied)
    config.architectures = [type(plain).__name__]
    return config


def _sized_config(plain: nn.Module, config):
    """The part of `config` (a copy of `plain.config`) that holds the block sizes: the config
    itself, or the sub-config (CLIP's `vision_config`) its sub-model with the blocks reads."""
    sized = config_of(plain)
    for key in getattr(plain.config, "sub_configs", None) or {}:
        if getattr(plain.config, key, None) is sized:
            return getattr(config, key)
    return config


def _compare(
    candidate: nn.Module,
    inputs: Any,
    expected: dict[str, torch.Tensor],
    tolerance: float,
    what: str,
) -> None:
    """Refuse if any output of `candidate` differs from `expected` beyond `tolerance`."""
    outputs = _outputs(candidate, inputs)
    for key, reference in expected.items():
        got = outputs.get(key)
        if got is None or got.shape != reference.shape:
            shape = None if got is None else tuple(got.shape)
            raise ConfigError(
                f"save_pretrained: output {key} of {what} has shape {shape}, the model's has "
                f"{tuple(reference.shape)}; nothing was written"
            )
        error = _relative_error(got, reference)
        if not error <= tolerance:
            raise ConfigError(
                f"save_pretrained: output {key} of {what} differs from the model's by {error:.2e} "
                f"(relative; tolerance {tolerance:g}); nothing was written"
            )


def _install(temporary: Path, target: Path) -> None:
    """Rename `temporary` to `target`, replacing an existing `target` only once it succeeded."""
    if not target.exists():
        os.replace(temporary, target)
        return
    aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
    os.replace(target, aside / "previous")
    try:
        os.replace(temporary, target)
    except BaseException:
        os.replace(aside / "previous", target)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)
