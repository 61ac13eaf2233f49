"""Experiment configs: nested frozen dataclasses loaded from TOML, with `--set key=value` overrides.

A config file has top-level keys `name`, `seeds`, `output_dir` and the tables `[model]`,
`[data]`, `[adapter]`, `[pruning]` and `[train]`. `from_dict` rejects unknown keys with their
full dotted path and checks every value's type and range; the resolved config is written back
into each run directory stamped with `spa_version`. `[adapter]` holds `kind` and that kind's own
config fields (`adapter_section`); an old `method = ...` table is mapped once, by
`presets.upgrade_method`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from spa._toml import tomllib
from spa.errors import ConfigError
from spa.experiments._typecheck import build_dataclass
from spa.experiments._typecheck import config_key_error as _fail
from spa.experiments.adapter_section import AdapterSection
from spa.experiments.bounds import check_bounds
from spa.experiments.criteria_names import block_criteria, channel_criteria, criteria_for
from spa.experiments.presets import upgrade_method
from spa.experiments.toml_writer import dumps_toml
from spa.recovery.distill import DistillConfig
from spa.recovery.ranks import RankAllocationConfig

Schedule = Literal["iterative", "gradual", "none"]


def _check_range(path: str, value: float, low: float, high: float, *, low_open: bool) -> None:
    above = value > low if low_open else value >= low
    if not (above and value <= high):
        bracket = "(" if low_open else "["
        raise _fail(path, f"must be in {bracket}{low}, {high}], got {value!r}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Which network to start from.

    Args:
        name: a `spa.models` registry name (e.g. "resnet50"), or "transformers" to load a
            `transformers` model from the local directory `path`.
        options: keyword arguments of the model builder (e.g. `small_input = true`, `width`);
            `num_classes` defaults to the data set's.
        weights: a local state-dict file (`.pth`/`.pt`/`.safetensors`, torchvision keys) loaded
            into the base model; a head of another size is skipped.
        path: local `transformers` model directory (`from_pretrained`, no download).
        head: module path of the task head.
    """

    name: str = "resnet18"
    options: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    path: str | None = None
    head: str = "fc"

    def __post_init__(self) -> None:
        if self.name == "transformers" and self.path is None:
            raise _fail("model.path", "is required when model.name = 'transformers'")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Which data set to train and evaluate on.

    Args:
        name: a `spa.data` registry name ("digits", "cifar10", "image_folder") or "squad".
        root: folder holding the files; omitted for data bundled with a library (digits).
        options: loader keyword arguments (e.g. `task = "parity"`, `split_file`).
        train_split: split used for training and pruning scores.
        eval_split: held-out split used for the reported accuracy.
        batch_size: training batch size.
        eval_batch_size: evaluation batch size.
    """

    name: str = "digits"
    root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    train_split: Literal["train", "val", "test"] = "train"
    eval_split: Literal["train", "val", "test"] = "test"
    batch_size: int = 64
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        for key in ("batch_size", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise _fail(f"data.{key}", f"must be >= 1, got {getattr(self, key)}")


@dataclass(frozen=True, kw_only=True)
class PruningConfig:
    """What to prune, by which criterion, down to which densities.

    Args:
        criterion: a channel criterion (`spa.pruning.CRITERIA`) for kinds that prune channels,
            a block criterion (`spa.pruning.block_criteria.BLOCK_CRITERIA`) for kinds that
            prune blocks.
        schedule: "iterative" (prune, train, repeat), "gradual" (cubic, block pruning) or "none"
            (no pruning, e.g. the "lora" preset or plain fine-tuning).
        densities: explicit densities (fraction of prunable weights kept) visited in order;
            if omitted they step down from 1 by `step` until `target_density`.
        step: fraction of the original weights removed per iterative step.
        target_density: the last density.
        ranking: "global" (all layers compete) or "local" (same fraction per layer).
        scoring_batches: batches used to compute data-driven scores.
        min_channels: never prune a layer below this many channels.
        round_to: keep channel counts multiples of this (e.g. 8), or per unit ({hidden = 4}).
        units: transformer units, "heads", "ffn" and/or "hidden"; default heads and FFN.
        target: what the densities measure: "params" (prunable weights kept, the paper's) or
            "flops" (fraction of the whole model's MACs kept, on the example batch).
        cost: ranking by plain scores ("none", the paper's) or by score per weight ("params")
            or per MAC ("macs") the channel's removal saves (`spa.pruning.cost`).
    """

    criterion: str = "taylor"
    schedule: Schedule = "iterative"
    densities: tuple[float, ...] | None = None
    step: float = 0.05
    target_density: float = 0.05
    ranking: Literal["global", "local"] = "global"
    scoring_batches: int = 8
    min_channels: int = 1
    round_to: int | dict[str, int] | None = None
    units: tuple[Literal["heads", "ffn", "hidden"], ...] | None = None
    target: Literal["params", "flops"] = "params"
    cost: Literal["none", "params", "macs"] = "none"

    def __post_init__(self) -> None:
        known = channel_criteria() + block_criteria()
        if self.criterion not in known:
            raise _fail("pruning.criterion", f"unknown {self.criterion!r}; allowed: {known}")
        _check_range("pruning.step", self.step, 0.0, 1.0, low_open=True)
        _check_range("pruning.target_density", self.target_density, 0.0, 1.0, low_open=True)
        if self.densities is not None:
            for value in self.densities:
                _check_range("pruning.densities", value, 0.0, 1.0, low_open=True)
            if list(self.densities) != sorted(self.densities, reverse=True):
                raise _fail("pruning.densities", f"must decrease, got {list(self.densities)}")
            if self.schedule != "none" and not any(value < 1.0 for value in self.densities):
                raise _fail(
                    "pruning.densities",
                    f"must list at least one density below 1 to prune, got "
                    f"{list(self.densities)}; omit it to step down to pruning.target_density, "
                    "or set pruning.schedule = 'none' for no pruning",
                )
        for key in ("scoring_batches", "min_channels"):
            if getattr(self, key) < 1:
                raise _fail(f"pruning.{key}", f"must be >= 1, got {getattr(self, key)}")
        from spa.pruning.config import round_to_problem

        if problem := round_to_problem(self.round_to):
            raise _fail("pruning.round_to", problem)

    def density_steps(self) -> list[float]:
        """The densities visited after the unpruned step, in order (empty for "none")."""
        if self.schedule == "none":
            return []
        if self.densities is not None:
            return [value for value in self.densities if value < 1.0]
        steps, current = [], 1.0
        while current - self.step > self.target_density + 1e-9:
            current = round(current - self.step, 10)
            steps.append(current)
        return steps + [self.target_density]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimiser and epochs.

    Args:
        initial_epochs: epochs trained before the first pruning step (E0).
        epochs_per_step: epochs trained after each pruning step (E).
        optimizer: "sgd" (with momentum) or "adamw".
        lr: base learning rate of a training block.
        momentum: SGD momentum.
        weight_decay: weight decay.
        lr_schedule: "paper" (divide by 5 at each quarter of a training block, as in the paper)
            or "constant".
        max_batches_per_epoch: cap on batches per epoch (quick runs); omitted for full epochs.
        device: torch device string.
        latency_batch_size: batch size of the CPU latency measurement of the compacted model.
    """

    initial_epochs: int = 1
    epochs_per_step: int = 1
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: Literal["paper", "constant"] = "paper"
    max_batches_per_epoch: int | None = None
    device: str = "cpu"
    latency_batch_size: int = 1

    def __post_init__(self) -> None:
        for key in ("initial_epochs", "epochs_per_step"):
            if getattr(self, key) < 0:
                raise _fail(f"train.{key}", f"must be >= 0, got {getattr(self, key)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise _fail("train.lr", f"must be a finite number > 0, got {self.lr}")
        _check_range("train.momentum", self.momentum, 0.0, 1.0, low_open=False)
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise _fail(
                "train.weight_decay", f"must be a finite number >= 0, got {self.weight_decay}"
            )
        if self.max_batches_per_epoch is not None and self.max_batches_per_epoch < 1:
            raise _fail("train.max_batches_per_epoch", "must be >= 1 or omitted")
        if self.latency_batch_size < 1:
            raise _fail("train.latency_batch_size", f"must be >= 1, got {self.latency_batch_size}")


@dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """One experiment: a model, a data set, a learning method, a pruning schedule and seeds.

    Args:
        name: experiment name used in tables.
        model: the base network.
        data: the data set.
        adapter: the adapter kind and its own fields (`[adapter] kind = ...`).
        pruning: criterion and densities.
        train: optimiser and epochs.
        distill: distillation from the unpruned model during recovery (`[distill]`, off by
            default: `weight = 0`).
        ranks: SPLoRA rank allocation before the first pruning step (`[ranks] budget = 0.5`;
            off by default: every layer keeps the fixed rank).
        seeds: one run per seed; tables aggregate them as mean ± std.
        output_dir: default run directory.
    """

    name: str = "experiment"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    adapter: AdapterSection = field(default_factory=AdapterSection)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    ranks: RankAllocationConfig = field(default_factory=RankAllocationConfig)
    seeds: tuple[int, ...] = (0,)
    output_dir: str = "runs/experiment"

    def __post_init__(self) -> None:
        check_bounds(self)  # numbers that size memory (spa.experiments.bounds)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise _fail("seeds", f"must be a non-empty list of distinct integers, got {self.seeds}")
        kind, pruning = self.adapter.kind, self.adapter.pruning
        if pruning == "none" and self.pruning.schedule != "none":
            raise _fail(
                "pruning.schedule",
                f"adapter.kind = {kind!r} does not prune; set pruning.schedule = 'none'",
            )
        allowed = criteria_for(pruning)
        if self.pruning.schedule != "none" and self.pruning.criterion not in allowed:
            raise _fail(
                "pruning.criterion",
                f"{self.pruning.criterion!r} does not fit adapter.kind = {kind!r} "
                f"({pruning} pruning); allowed: {allowed}",
            )


# Top-level keys written by `config_to_toml` that are not config fields.
_STAMP_KEYS = ("spa_version",)


def from_dict(data: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate an `ExperimentConfig` from nested plain data (e.g. parsed TOML).

    Args:
        data: nested mapping with the keys of `ExperimentConfig` (and optionally `spa_version`).

    Returns:
        The validated config.

    Raises:
        ConfigError: for an unknown key (named with its full dotted path), a value of the wrong
            type or out of range (naming the key and the allowed values).
    """
    return build_dataclass(ExperimentConfig, upgrade_method(data), allowed_extra=_STAMP_KEYS)


def to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """The config as nested plain data (tuples become lists; `None` values are left out)."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if v is not None}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    data = dataclasses.asdict(config)
    data["adapter"] = config.adapter.to_table()
    return clean(data)


def set_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `key.sub=value` override in place; the value is parsed as TOML, else a string.

    Args:
        data: nested config data.
        assignment: e.g. `train.lr=0.1`, `seeds=[0, 1]`, `data.options.task=parity`.

    Raises:
        ConfigError: if the assignment has no `=` or walks through a non-table value.
    """
    key, separator, text = assignment.partition("=")
    key = key.strip()
    if not separator or not key:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    try:
        value = tomllib.loads(f"value = {text.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    parts = key.split(".")
    node = data
    for index, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise _fail(".".join(parts[: index + 1]), f"is not a table; cannot set {key!r}")
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read a TOML config file, apply `--set` overrides and validate.

    Args:
        path: the TOML file.
        overrides: `key=value` assignments applied in order.

    Returns:
        The validated config.

    Raises:
        ConfigError: if the file is missing or not valid TOML (naming the file), or validation
            fails.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a TOML config file") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise ConfigError(f"{path}: cannot read the config file ({reason})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML ({error})") from None
    for assignment in overrides:
        set_override(data, assignment)
    return from_dict(data)


def config_to_toml(config: ExperimentConfig) -> str:
    """The resolved config as TOML text, stamped with the spa version that ran it."""
    from spa._version import __version__

    return dumps_toml({"spa_version": __version__, **to_dict(config)})
