"""Build the data sets, the base model and the adapted model an experiment config describes."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from spa.adapters import adapt
from spa.errors import ConfigError, RankError
from spa.experiments._typecheck import config_key_error
from spa.experiments.config import (
    AdapterSection,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
)

logger = logging.getLogger(__name__)


def build_datasets(config: DataConfig) -> tuple[Dataset, Dataset]:
    """The training and evaluation data sets of `config`.

    Args:
        config: the data section.

    Returns:
        `(train, eval)` data sets of `(image, label)` with a `num_classes` attribute.

    Raises:
        ConfigError: for an unknown data set or invalid options (from `spa.data`).
    """
    from spa.data import load_dataset

    options = dict(config.options)
    train = load_dataset(config.name, config.root, config.train_split, **options)
    evaluation = load_dataset(config.name, config.root, config.eval_split, **options)
    return train, evaluation


def _builder_defaults(builder, options: dict, num_classes: int, in_channels: int) -> dict:
    parameters = inspect.signature(builder).parameters
    options = dict(options)
    if "num_classes" in parameters:
        options.setdefault("num_classes", num_classes)
    if "in_channels" in parameters:
        options.setdefault("in_channels", in_channels)
    return options


class LogitsOnly(nn.Module):
    """Wraps a `transformers` image classifier so that `forward(images)` returns the logits.

    Args:
        model: a `transformers` model whose output has a `logits` field.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits `(N, num_classes)` of images `(N, C, H, W)`."""
        return self.model(pixel_values=images).logits


def build_models(
    config: ModelConfig, num_classes: int, in_channels: int
) -> tuple[nn.Module, nn.Module]:
    """The plain base model and the task model to adapt (a copy with a head for the task).

    With `weights`, the base is the network exactly as stored in the file (its own head), so
    every task trained from the same file shares one base (and one bundle fingerprint); the task
    model is a copy whose `head` Linear is replaced by a freshly initialised one when the class
    count differs. Without `weights` the base is the randomly initialised task model itself.

    Args:
        config: the model section.
        num_classes: classes of the task (used unless `options` sets `num_classes`).
        in_channels: image channels of the data (used unless `options` sets `in_channels`).

    Returns:
        `(base, task_model)`, both in training mode; they share no tensors.

    Raises:
        ConfigError: for an unknown model, bad options, or a weights file/directory that is
            missing or does not fit (naming the file and key).
    """
    if config.name == "transformers":
        model = _transformers_model(config, num_classes)
        return copy.deepcopy(model), model
    from spa.models import create_model
    from spa.models.loading import load_model

    options = base_options(config, num_classes, in_channels)
    if config.weights is None:
        model = create_model(config.name, **options)
        return copy.deepcopy(model), model
    base = load_model(config.weights, name=config.name, options=options, head_name=config.head)
    model = copy.deepcopy(base.model)
    _replace_head(model, config.head, num_classes)
    return base.model, model


def base_options(config: ModelConfig, num_classes: int, in_channels: int) -> dict[str, Any] | None:
    """The `spa.models` builder arguments of the base model (None for `transformers` models).

    With `weights`, `num_classes` is the stored head's size, so the base is the stored network.
    """
    if config.name == "transformers":
        return None
    from spa.models import MODELS

    options = _builder_defaults(MODELS.get(config.name), config.options, num_classes, in_channels)
    if config.weights is not None:
        options["num_classes"] = _stored_head_classes(config)
    return options


def _stored_head_classes(config: ModelConfig) -> int:
    from spa.models.loading import read_state_dict

    state = read_state_dict(config.weights)
    weight = state.get(f"{config.head}.weight")
    if weight is None:
        raise ConfigError(
            f"config key 'model.head': the weights file {config.weights} has no "
            f"'{config.head}.weight'; set model.head to the module path of the classifier"
        )
    return int(weight.shape[0])


def _replace_head(model: nn.Module, head: str, num_classes: int) -> None:
    try:
        module = model.get_submodule(head)
    except AttributeError:
        raise ConfigError(f"config key 'model.head': the model has no module {head!r}") from None
    if not isinstance(module, nn.Linear):
        raise ConfigError(
            f"config key 'model.head': {head!r} is a {type(module).__name__}, expected nn.Linear"
        )
    if module.out_features == num_classes:
        return
    parent_name, _, child = head.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    new_head = nn.Linear(module.in_features, num_classes, bias=module.bias is not None)
    setattr(parent, child, new_head.to(module.weight.device, module.weight.dtype))


def _transformers_model(config: ModelConfig, num_classes: int) -> nn.Module:
    from spa.models.loading import load_transformers

    path = Path(config.path)
    if not path.is_dir():
        raise ConfigError(f"config key 'model.path': {path} is not a local model directory")
    model = load_transformers(
        path,
        "AutoModelForImageClassification",
        num_labels=num_classes,
        ignore_mismatched_sizes=True,
    )
    return LogitsOnly(model)


def adapter_config(section: AdapterSection, head: str) -> Any:
    """The `spa.adapt` config of the section's kind, with `head` as its task head.

    Args:
        section: the adapter section (a kind's config, or a preset's).
        head: module path (suffix) of the task head, which trains fully and is never adapted.

    Returns:
        The kind's config with `head_modules = [head]`.
    """
    return dataclasses.replace(section.config, head_modules=[head])


def adapt_model(model: nn.Module, config: ExperimentConfig) -> nn.Module:
    """Adapt `model` in place for the config's adapter kind and return it.

    Raises:
        ConfigError: naming `adapter.rank` for a rank wider than every layer of the model.
    """
    try:
        return adapt(model, adapter_config(config.adapter, config.model.head))
    except RankError as error:
        raise config_key_error("adapter.rank", str(error)) from None


def method_label(section: AdapterSection) -> str:
    """Table label of the learning method, e.g. "SPLoRA r8" (from the kind's `label`)."""
    return section.label()


def task_label(config: DataConfig) -> str:
    """Table label of a data set, e.g. "digits/parity" or "cifar10"."""
    task = config.options.get("task")
    return f"{config.name}/{task}" if task else config.name
