"""`adapt(model, config)`: replace eligible layers by adapter layers and freeze the base."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from torch import nn

from spa.adapters._conv import SUPPORTED_LAYERS
from spa.adapters.base import ADAPTER_TYPES, is_adapted
from spa.adapters.config import (
    AdapterConfig,
    FinePruningConfig,
    ModuleSelection,
    SPLoPAConfig,
    SPLoRAConfig,
)
from spa.adapters.splopa import PrototypeBank, SPLoPALinear
from spa.adapters.splora import SPLoRALayer
from spa.errors import ConfigError, NoTargetsError, SpaError

logger = logging.getLogger(__name__)

NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
)


@dataclass
class AdaptReport:
    """What `adapt` did: adapted layers, skipped layers with reasons, the head and the config."""

    config: AdapterConfig
    adapted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    head: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A human-readable multi-line summary."""
        lines = [f"adapted {len(self.adapted)} layer(s) with {type(self.config).__name__}"]
        lines += [f"  skipped {name}: {reason}" for name, reason in self.skipped.items()]
        return "\n".join(lines)


def matches(name: str, selection: ModuleSelection) -> bool:
    """True if dotted `name` is selected by a regex (searched) or a list of name suffixes."""
    if selection is None:
        return False
    if isinstance(selection, str):
        return re.search(selection, name) is not None
    return any(name == s or name.endswith("." + s) for s in selection)


def find_head(model: nn.Module, selection: ModuleSelection) -> list[str]:
    """Names of the task-head modules: those selected, or else the last `nn.Linear`."""
    if selection is not None:
        return [n for n, _ in model.named_modules() if n and matches(n, selection)]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


def _eligible_types(config: AdapterConfig) -> tuple[type, ...]:
    return (nn.Linear,) if isinstance(config, SPLoPAConfig) else SUPPORTED_LAYERS


def _make_layer(config: AdapterConfig, module: nn.Module, name: str, banks: dict) -> nn.Module:
    if isinstance(config, SPLoRAConfig):
        rank = config.rank
        if config.rank_fraction is not None:
            rank = max(1, round(config.rank_fraction * module.weight.shape[0]))
        return SPLoRALayer(module, rank=rank, init_range=config.init_range, name=name)
    if isinstance(config, FinePruningConfig):
        return SPLoRALayer(module, rank=0, name=name)
    bank = None
    if config.shared_prototypes:
        key = config.block_shape
        if key not in banks:
            weight = module.weight
            banks[key] = PrototypeBank(
                config.block_shape,
                config.num_prototypes,
                config.prototype_rank,
                device=weight.device,
                dtype=weight.dtype,
            )
        bank = banks[key]
    return SPLoPALinear(
        module,
        block_shape=config.block_shape,
        num_prototypes=config.num_prototypes,
        prototype_rank=config.prototype_rank,
        init_range=config.init_range,
        bank=bank,
        name=name,
    )


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def set_trainable(model: nn.Module, trainable: tuple[str, ...], head: list[str]) -> None:
    """Freeze everything, then unfreeze adapter parameters and the configured groups.

    Fine-pruning layers (rank 0) train their base weight and, with "bias", their bias.
    """
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    everything = "all" in trainable
    for name, module in model.named_modules():
        in_head = any(name == h or name.startswith(h + ".") for h in head)
        direct = list(module.named_parameters(recurse=False))
        if isinstance(module, ADAPTER_TYPES):
            for attr in module.adapter_parameter_names():
                getattr(module, attr).requires_grad_(True)
            if isinstance(module, SPLoPALinear):
                for parameter in module.prototypes.parameters():
                    parameter.requires_grad_(True)
            if isinstance(module, SPLoRALayer) and module.rank == 0:
                module.base.weight.requires_grad_(True)
            continue
        if everything or (in_head and "head" in trainable):
            for _, parameter in direct:
                parameter.requires_grad_(True)
            continue
        if isinstance(module, NORM_TYPES) and "norm" in trainable:
            for _, parameter in direct:
                parameter.requires_grad_(True)
        if "bias" in trainable:
            for pname, parameter in direct:
                if pname == "bias":
                    parameter.requires_grad_(True)


def adapt(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Replace every eligible layer of `model` by an adapter layer and freeze the base weights.

    Eligible layers are `nn.Linear` / `nn.Conv1d/2d/3d` for SPLoRA and fine-pruning, `nn.Linear`
    for SPLoPA, selected by `config.target_modules` / `exclude_modules`; the task head is never
    adapted (it trains fully when "head" is in `config.trainable`). All parameters are frozen,
    then adapter parameters and `config.trainable` groups are unfrozen. The model is modified in
    place and returned; `model.spa_report` holds an `AdaptReport`.

    Raises:
        ConfigError: if the model is already adapted or a selection matches nothing.
        NoTargetsError: if no layer could be adapted.
        UnsupportedLayerError: if an explicitly targeted layer cannot be adapted.
    """
    if is_adapted(model):
        raise ConfigError("model is already adapted; adapt a fresh copy of the base model")
    head = find_head(model, config.head_modules)
    if config.head_modules is not None and not head:
        raise ConfigError(f"head_modules={config.head_modules!r} matches no module")
    report = AdaptReport(config=config, head=head)
    eligible = _eligible_types(config)
    explicit = config.target_modules is not None
    candidates = []
    for name, module in model.named_modules():
        if not name or not isinstance(module, nn.Linear | nn.modules.conv._ConvNd):
            continue
        if explicit and not matches(name, config.target_modules):
            continue
        if matches(name, config.exclude_modules):
            continue
        if any(name == h or name.startswith(h + ".") for h in head):
            report.skipped[name] = "task head (trained fully, not adapted)"
            continue
        if not isinstance(module, eligible):
            report.skipped[name] = (
                f"{type(module).__name__} is not supported by {type(config).__name__}"
            )
            continue
        candidates.append((name, module))
    banks: dict = {}
    for name, module in candidates:
        try:
            layer = _make_layer(config, module, name, banks)
        except SpaError as error:
            if explicit:
                raise
            report.skipped[name] = str(error)
            continue
        _set_module(model, name, layer)
        report.adapted.append(name)
    if not report.adapted:
        raise NoTargetsError(
            f"{type(config).__name__}: no layer was adapted (target_modules="
            f"{config.target_modules!r}, exclude_modules={config.exclude_modules!r}); skipped: "
            f"{report.skipped or 'none'}"
        )
    set_trainable(model, config.trainable, head)
    model.spa_report = report
    logger.info(report.summary())
    return model
