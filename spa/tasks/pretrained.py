"""`save_pretrained`: write a pruned `transformers` model as a directory plain `transformers` loads.

The model (adapted and masked, or a task from `load_task` / `TaskHost`) is compacted and fused
on a copy (`spa.compact`, `spa.fuse`), its config gets the new head / key-value head / FFN
counts (`spa.families.config_values`, which refuses layers of different shapes), and a model of
the same `transformers` class is built from that config, loaded strictly with the fused weights
(transposed back for GPT-2's `Conv1D`) and compared with the input model on a small input. The
directory (`config.json`, `model.safetensors`, ...) is written by `transformers`' own
`save_pretrained` into a temporary directory beside the destination, loaded back with
`from_pretrained` and compared again, and only then renamed into place: a refused or failed
export leaves nothing behind.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError
from torch import nn

from spa._batch import call_model
from spa.adapters.transposed import is_transposed_linear, weight_in_layout
from spa.deploy import fuse
from spa.errors import ConfigError
from spa.families import config_values, describe
from spa.pruning import compact, remove_empty_units
from spa.tasks.format import _umask


def save_pretrained(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    example_inputs: Any = None,
    overwrite: bool = False,
    tolerance: float = 1e-4,
    empty_units: bool = False,
) -> Path:
    """Write `model` as a `transformers` directory that `from_pretrained` loads without spa.

    Args:
        model: a `transformers` model (`PreTrainedModel`), adapted and masked (channel pruning
            of heads / FFN neurons with `ranking="local"`), or a task model from `load_task`.
        directory: the destination; created atomically (a temporary directory beside it is
            renamed into place).
        example_inputs: a batch to compare outputs on (a tensor for the model's main input, a
            dict of keyword inputs, or a tuple); None makes a small one from the config (token
            ids or pixels).
        overwrite: replace a non-empty existing `directory`.
        tolerance: largest accepted difference of any output from `model`'s, relative to the
            largest magnitude of that output.
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
    expected = _outputs(model, inputs)
    plain = fuse(compact(copy.deepcopy(model)), inplace=True).eval()
    if empty_units:
        remove_empty_units(plain)
    rebuilt = _rebuild(plain, _exported_config(plain))
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
    config = model.config
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
        values = config_values(plain, family, config)
        try:
            for key, value in values.items():
                setattr(config, key, value)
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


def _rebuild(plain: nn.Module, config) -> nn.Module:
    """A fresh model of `plain`'s class built from `config`, holding `plain`'s weights.

    It is built on the meta device (no random initialisation of weights that are replaced at
    once) and takes `plain`'s tensors; buffers outside the state dict (rotary frequencies) are
    taken from `plain` where they have the same shape, else the model is built for real.
    """
    with torch.device("meta"):
        rebuilt = type(plain)(config)
    modules = dict(plain.named_modules())
    state = plain.state_dict()
    for name, module in rebuilt.named_modules():
        key = f"{name}.weight" if name else "weight"
        if is_transposed_linear(module) and isinstance(modules.get(name), nn.Linear):
            state[key] = weight_in_layout(module, state[key])
    wanted = rebuilt.state_dict()
    config_class = type(config).__name__
    for key, tensor in wanted.items():
        if key not in state:
            raise ConfigError(
                f"save_pretrained: {key} is missing from the model; a {type(plain).__name__} "
                f"built from transformers' {config_class} needs it"
            )
        if state[key].shape != tensor.shape:
            raise ConfigError(
                f"save_pretrained: {key} has shape {tuple(state[key].shape)}, a "
                f"{type(plain).__name__} built from the exported {config_class} has "
                f"{tuple(tensor.shape)}; the config cannot describe this model"
            )
    extra = sorted(set(state) - set(wanted))
    if extra:
        raise ConfigError(
            f"save_pretrained: {extra[0]} has no place in a {type(plain).__name__} built from "
            f"transformers' {config_class}"
        )
    rebuilt.load_state_dict(state, strict=True, assign=True)
    if not _take_buffers(rebuilt, plain):
        parameter = next(plain.parameters())
        rebuilt = type(plain)(config).to(device=parameter.device, dtype=parameter.dtype)
        rebuilt.load_state_dict(state, strict=True)
    if getattr(config, "tie_word_embeddings", False):
        rebuilt.tie_weights()  # assigned tensors are separate parameters: share them again
    return rebuilt.eval()


def _take_buffers(rebuilt: nn.Module, plain: nn.Module) -> bool:
    """Fill `rebuilt`'s buffers left on the meta device from `plain`'s of the same name and
    shape; False if one has no such counterpart."""
    found = dict(plain.named_buffers())
    for name, buffer in list(rebuilt.named_buffers()):
        if not buffer.is_meta:
            continue
        source = found.get(name)
        if source is None or source.shape != buffer.shape:
            return False
        owner, _, key = name.rpartition(".")
        rebuilt.get_submodule(owner)._buffers[key] = source.clone()
    return not any(t.is_meta for t in [*rebuilt.parameters(), *rebuilt.buffers()])


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
        scale = reference.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
        error = float((got - reference).abs().max() / scale)
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
