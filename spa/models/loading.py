"""The one place spa loads models: its own networks by registry name, torchvision-format state
dict files (`.pt` / `.pth` / `.safetensors`) and local `transformers` model directories.

Every loader reads local files only (no downloads) and fails with a one-line `ConfigError`
naming the path (or registry name) and what was wrong. Example:

    >>> from spa.models.loading import load_model
    >>> loaded = load_model("resnet18.pth", name="resnet18", options={"num_classes": 10})
    >>> loaded = load_model("bert-squad/", auto_class="AutoModelForQuestionAnswering")
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from spa.errors import ConfigError

__all__ = [
    "LoadedModel",
    "WeightLoadReport",
    "build_transformers",
    "load_model",
    "load_tokenizer",
    "load_torchvision_weights",
    "load_transformers",
    "read_state_dict",
    "read_transformers_config",
]

STATE_DICT_SUFFIXES = (".pt", ".pth", ".safetensors")
# Files a saved tokenizer's vocabulary lives in (fast tokenizers, WordPiece, BPE, SentencePiece).
VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "tokenizer.model")


@dataclass(frozen=True, kw_only=True)
class WeightLoadReport:
    """What `load_torchvision_weights` did.

    Args:
        loaded: keys copied from the file into the model.
        skipped: head keys left at the model's own values because their shape differed,
            with the reason.
    """

    loaded: tuple[str, ...]
    skipped: dict[str, str]


@dataclass(frozen=True, kw_only=True)
class LoadedModel:
    """A model loaded by `load_model` and where it came from.

    Args:
        model: the loaded model (in the mode its loader returns it).
        source: "spa.models" (a registry network with a state dict) or "transformers".
        name: the registry name, or the `transformers` class name.
        options: the registry builder's keyword arguments (empty for `transformers`).
    """

    model: nn.Module
    source: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from a `.safetensors` file or a `.pt`/`.pth` file (no pickle objects).

    A `.pt`/`.pth` file is read with `torch.load(weights_only=True)`; a mapping wrapped under
    `state_dict` or `model` (common training checkpoints) is unwrapped.

    Args:
        path: the file.

    Returns:
        Names to tensors.

    Raises:
        ConfigError: if the file is missing, unreadable or not a mapping of names to tensors.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, expected a state-dict file")
    if not path.is_file():
        raise ConfigError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # imported lazily: optional file format

            raw: object = load_file(str(path))
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # re-raised with the file named; the cause is chained
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"{path}: cannot read weights ({message})") from error
    if isinstance(raw, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(raw.get(wrapper), Mapping):
                raw = raw[wrapper]
                break
    if not isinstance(raw, Mapping) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise ConfigError(f"{path}: expected a state dict (a mapping of names to tensors)")
    return dict(raw)


def load_torchvision_weights(
    model: nn.Module,
    path: str | Path,
    *,
    skip_head: bool = False,
    head_name: str = "fc",
) -> WeightLoadReport:
    """Load a local torchvision-style checkpoint into `model`, checking every key and shape.

    The file is a `.pth`/`.pt` (read with `torch.load(weights_only=True)`) or a `.safetensors`
    state dict. Keys must match the model's exactly; only BatchNorm `num_batches_tracked`
    buffers (absent from torchvision's release files) and all but one name of a tied tensor
    (an LM head sharing the embedding, stored once in safetensors files) may be missing. On any
    error the model is left untouched.

    Args:
        model: the model to fill, e.g. `resnet50()`.
        path: the weights file.
        skip_head: if true, keys under `head_name` whose shape differs from the model's (a head
            for another number of classes) are skipped and reported instead of raising.
        head_name: the module path of the classification head.

    Returns:
        The loaded keys and the skipped head keys with the reason.

    Raises:
        ConfigError: if the file is missing or unreadable, or a key is missing, unexpected or
            of the wrong shape; the message names the file and the first offending key.
    """
    path = Path(path)
    file_state = read_state_dict(path)
    model_state = model.state_dict()
    head_prefix = f"{head_name}."
    skipped: dict[str, str] = {}
    tied = _tied_keys(model)
    for key, target in model_state.items():
        if key not in file_state:
            if key.endswith("num_batches_tracked") or tied.get(key, set()) & set(file_state):
                continue  # absent from torchvision files / saved once for all tied names
            raise ConfigError(f"{path}: key {key!r} is missing from the file")
        source_shape = tuple(file_state[key].shape)
        if source_shape != tuple(target.shape):
            message = (
                f"{path}: key {key!r} has shape {source_shape} in the file but "
                f"{tuple(target.shape)} in the model"
            )
            if skip_head and key.startswith(head_prefix):
                skipped[key] = message
                continue
            if key.startswith(head_prefix):
                message += "; pass skip_head=True to keep the model's own head"
            raise ConfigError(message)
    unexpected = [key for key in file_state if key not in model_state]
    if unexpected:
        raise ConfigError(
            f"{path}: key {unexpected[0]!r} is in the file but not in the model "
            f"({len(unexpected)} unexpected keys in all)"
        )
    loaded = {key: value for key, value in file_state.items() if key not in skipped}
    model.load_state_dict(loaded, strict=False)
    return WeightLoadReport(loaded=tuple(loaded), skipped=skipped)


def _tied_keys(model: nn.Module) -> dict[str, set[str]]:
    """For each state-dict key, the other keys naming the same tensor (tied weights, e.g. an LM
    head sharing the input embedding; safetensors files store such a tensor once)."""
    names: dict[int, list[str]] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        names.setdefault(id(tensor), []).append(key)
    return {key: set(group) - {key} for group in names.values() for key in group}


def read_transformers_config(path: str | Path) -> dict[str, Any]:
    """The parsed `config.json` of a local `transformers` model directory.

    Raises:
        ConfigError: if `path` is not a directory, has no `config.json`, or it is not a JSON
            object.
    """
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: not a local transformers model directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError(
            f"{path}: a transformers model directory needs config.json, which is missing"
        )
    try:
        document = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{config_file}: cannot read it as JSON ({error})") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{config_file}: expected a JSON object")
    return document


def _transformers_class(name: str, where: str) -> type[nn.Module]:
    import transformers

    model_class = getattr(transformers, name, None)
    if not isinstance(model_class, type):
        raise ConfigError(f"{where}: {name!r} is not a transformers model class")
    return model_class


def load_transformers(path: str | Path, auto_class: str | None = None, **kwargs: Any) -> nn.Module:
    """Load a local `transformers` model directory (config.json + weights), no download.

    Args:
        path: the model directory.
        auto_class: the `transformers` class to load with, e.g.
            "AutoModelForQuestionAnswering" (chosen by the task type); None uses the first class
            named under `architectures` in config.json.
        **kwargs: further `from_pretrained` arguments (e.g. `num_labels`).

    Returns:
        The model as `from_pretrained` returns it (eval mode).

    Raises:
        ConfigError: if the directory or its config.json is missing, config.json names no
            known class, or the weights cannot be loaded (naming the directory).
    """
    path = Path(path)
    document = read_transformers_config(path)
    if auto_class is None:
        names = document.get("architectures") or []
        if not names:
            raise ConfigError(f"{path}: config.json names no architecture ('architectures')")
        auto_class = str(names[0])
    model_class = _transformers_class(auto_class, str(path))
    try:
        model = model_class.from_pretrained(str(path), local_files_only=True, **kwargs)
    except (OSError, ValueError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"{path}: cannot load the model with {auto_class} ({message})") from None
    return model


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer saved in a local `transformers` model directory (no download).

    Raises:
        ConfigError: if the directory has no vocabulary file or its tokenizer cannot be loaded
            (`transformers` would otherwise build an empty tokenizer that maps every word to
            the unknown token).
    """
    path = Path(path)
    read_transformers_config(path)
    if not any((path / name).is_file() for name in VOCABULARY_FILES):
        raise ConfigError(
            f"{path}: no tokenizer vocabulary (one of {', '.join(VOCABULARY_FILES)}); save the "
            "tokenizer next to the model with `tokenizer.save_pretrained`"
        )
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"{path}: cannot load the tokenizer ({message})") from None


def build_transformers(class_name: str, config: Mapping[str, Any]) -> nn.Module:
    """A randomly initialised `transformers` model from a class name and a config dict.

    Args:
        class_name: e.g. "BertForQuestionAnswering".
        config: the model config as a dict (`PretrainedConfig.to_dict()`), with `model_type`.

    Raises:
        ConfigError: for an unknown class name.
    """
    import transformers

    model_class = getattr(transformers, str(class_name), None)
    if not isinstance(model_class, type) or not issubclass(model_class, nn.Module):
        raise ConfigError(f"unknown transformers model class {class_name!r}")
    options = dict(config)
    model_type = options.pop("model_type", None)
    return model_class(transformers.AutoConfig.for_model(model_type, **options))


def load_model(
    path: str | Path,
    *,
    name: str | None = None,
    options: Mapping[str, Any] | None = None,
    auto_class: str | None = None,
    head_name: str = "fc",
) -> LoadedModel:
    """Load a model from a local path: a `transformers` directory or a state-dict file.

    Args:
        path: a `transformers` model directory, or a `.pt`/`.pth`/`.safetensors` state dict.
        name: the `spa.models` registry name of the network a state dict belongs to.
        options: the registry builder's keyword arguments (e.g. `num_classes`).
        auto_class: for a directory, the `transformers` class to load with (see
            `load_transformers`).
        head_name: module path of the classifier (named in key errors).

    Returns:
        The model and its source.

    Raises:
        ConfigError: if the path is missing, a directory lacks config.json, a file is not a
            state dict or does not fit the network, `name` is missing for a file or unknown
            (the message lists the known names).
    """
    path = Path(path)
    if path.is_dir():
        model = load_transformers(path, auto_class)
        return LoadedModel(model=model, source="transformers", name=type(model).__name__)
    if not path.exists():
        raise ConfigError(f"{path}: no such model file or directory")
    if path.suffix not in STATE_DICT_SUFFIXES:
        raise ConfigError(
            f"{path}: expected a state-dict file ({', '.join(STATE_DICT_SUFFIXES)}) or a "
            "transformers model directory"
        )
    if not name:
        raise ConfigError(f"{path}: a state-dict file needs a spa.models registry name")
    from spa.models import create_model  # the registry lives in the package above this module

    builder_options = dict(options or {})
    model = create_model(name, **builder_options)
    load_torchvision_weights(model, path, head_name=head_name)
    return LoadedModel(model=model, source="spa.models", name=name, options=builder_options)
