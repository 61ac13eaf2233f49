"""Build the data sets, the base model and the adapted model an experiment config describes."""

from __future__ import annotations

import copy
import inspect
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from spa.adapters import FinePruningConfig, SPLoPAConfig, SPLoRAConfig, adapt
from spa.errors import ConfigError
from spa.experiments.config import (
    BLOCK_CRITERIA,
    CHANNEL_CRITERIA,
    AdapterSection,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
)

logger = logging.getLogger(__name__)


def unsupported_reason(config: ExperimentConfig) -> str | None:
    """Why this config cannot run in this build of spa (naming the key), or None if it can.

    Image data sets run the channel path (fine-pruning, LoRA, SPLoRA; iterative schedule);
    SQuAD runs the block path (SPLoPA or block fine-pruning; gradual schedule).
    """
    pruning = config.pruning
    if config.data.name == "squad":
        if config.adapter.method not in ("splopa", "fine-pruning"):
            return (
                f"config key 'adapter.method' = {config.adapter.method!r}: question answering "
                "runs support 'splopa' and 'fine-pruning' (block pruning)"
            )
        if pruning.schedule != "gradual" or pruning.criterion not in BLOCK_CRITERIA:
            key = "pruning.schedule" if pruning.schedule != "gradual" else "pruning.criterion"
            value = pruning.schedule if key == "pruning.schedule" else pruning.criterion
            return (
                f"config key {key!r} = {value!r}: question answering runs use the 'gradual' "
                f"schedule with a block criterion, one of {BLOCK_CRITERIA}"
            )
        return None
    if config.adapter.method == "splopa":
        return (
            "config key 'adapter.method' = 'splopa': block pruning of image models is not yet "
            "supported by `spa run` (it runs for data.name = 'squad'); use 'fine-pruning', "
            "'lora' or 'splora'"
        )
    if pruning.schedule == "gradual":
        return (
            "config key 'pruning.schedule' = 'gradual': the gradual (cubic) schedule is not yet "
            "supported for image models by `spa run`; use 'iterative' or 'none'"
        )
    if pruning.schedule != "none" and pruning.criterion in BLOCK_CRITERIA:
        return (
            f"config key 'pruning.criterion' = {pruning.criterion!r}: block fine-pruning of "
            f"image models is not yet supported by `spa run`; use one of {CHANNEL_CRITERIA}"
        )
    return None


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
    from spa.models import create_model, load_torchvision_weights

    options = base_options(config, num_classes, in_channels)
    if config.weights is None:
        model = create_model(config.name, **options)
        return copy.deepcopy(model), model
    base = create_model(config.name, **options)
    load_torchvision_weights(base, config.weights, head_name=config.head)
    model = copy.deepcopy(base)
    _replace_head(model, config.head, num_classes)
    return base, model


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
    from spa.models.resnet import _read_state_dict  # the one reader of local weight files

    state = _read_state_dict(Path(config.weights))
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
    path = Path(config.path)
    if not path.is_dir():
        raise ConfigError(f"config key 'model.path': {path} is not a local model directory")
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(
        str(path), num_labels=num_classes, ignore_mismatched_sizes=True, local_files_only=True
    )
    return LogitsOnly(model)


def adapter_config(
    section: AdapterSection, head: str
) -> SPLoRAConfig | SPLoPAConfig | FinePruningConfig:
    """The `spa.adapt` config of a learning method.

    Args:
        section: the adapter section.
        head: module path (suffix) of the task head, which trains fully and is never adapted.

    Returns:
        SPLoRA for "splora" and "lora" (LoRA is SPLoRA that is never pruned), SPLoPA for
        "splopa", fine-pruning otherwise.
    """
    selection = {
        "target_modules": _selection(section.target_modules),
        "exclude_modules": _selection(section.exclude_modules),
        "head_modules": [head],
    }
    if section.method in ("splora", "lora"):
        return SPLoRAConfig(rank=section.rank, init_range=section.init_range, **selection)
    if section.method == "splopa":
        return SPLoPAConfig(
            block_shape=section.block_shape,
            num_prototypes=section.num_prototypes,
            prototype_rank=section.prototype_rank,
            shared_prototypes=section.shared_prototypes,
            init_range=section.init_range,
            **selection,
        )
    return FinePruningConfig(**selection)


def _selection(value: str | tuple[str, ...] | None) -> str | list[str] | None:
    return list(value) if isinstance(value, tuple) else value


def adapt_model(model: nn.Module, config: ExperimentConfig) -> nn.Module:
    """Adapt `model` in place for the config's learning method and return it."""
    return adapt(model, adapter_config(config.adapter, config.model.head))


def method_label(section: AdapterSection) -> str:
    """Table label of a learning method, e.g. "SPLoRA r8" or "Fine-pruning"."""
    if section.method == "splora":
        return f"SPLoRA r{section.rank}"
    if section.method == "lora":
        return f"LoRA r{section.rank}"
    if section.method == "splopa":
        p, q = section.block_shape
        return f"SPLoPA R{section.num_prototypes} {p}x{q}"
    return "Fine-pruning"


def task_label(config: DataConfig) -> str:
    """Table label of a data set, e.g. "digits/parity" or "cifar10"."""
    task = config.options.get("task")
    return f"{config.name}/{task}" if task else config.name
