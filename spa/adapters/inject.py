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
from spa.adapters.transposed import as_linear, is_transposed_linear
from spa.errors import ConfigError, NoTargetsError, SpaError

logger = logging.getLogger(__name__)

NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def is_norm(module: nn.Module) -> bool:
    """True for a normalisation layer with an affine weight, by type or by duck typing.

    torch's norms count by type; any other class whose name contains "Norm" and that holds a
    1-D `weight` parameter of its own (LlamaRMSNorm, T5LayerNorm, ...) counts too.
    """
    if isinstance(module, NORM_TYPES):
        return True
    weight = module._parameters.get("weight")
    return "Norm" in type(module).__name__ and weight is not None and weight.dim() == 1


@dataclass
class AdaptReport:
    """What `adapt` did: adapted layers, skipped layers with reasons, the head and the config."""

    config: AdapterConfig
    adapted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    head: list[str] = field(default_factory=list)
    # Trainable parameter group ("norm", "head", "bias", "all") -> parameter paths it unfroze.
    trainable: dict[str, list[str]] = field(default_factory=dict)
    # Transposed-weight layers (transformers Conv1D) adapted as their equivalent nn.Linear.
    linearised: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A human-readable multi-line summary."""
        lines = [f"adapted {len(self.adapted)} layer(s) with {type(self.config).__name__}"]
        lines += [f"  skipped {name}: {reason}" for name, reason in self.skipped.items()]
        lines += [
            f"  trainable {group}: {len(names)} parameter tensor(s)"
            for group, names in self.trainable.items()
        ]
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


def set_trainable(
    model: nn.Module, trainable: tuple[str, ...], head: list[str]
) -> dict[str, list[str]]:
    """Freeze everything, then unfreeze adapter parameters and the configured groups.

    Fine-pruning layers (rank 0) train their base weight and, with "bias", their bias. Norms are
    found with `is_norm` (any norm class with an affine weight).

    Returns:
        Per group ("all", "head", "norm", "bias"), the paths of the parameters it unfroze.
    """
    unfrozen: dict[str, list[str]] = {}

    def unfreeze(group: str, module_name: str, pname: str, parameter) -> None:
        if not parameter.requires_grad:
            parameter.requires_grad_(True)
            path = f"{module_name}.{pname}" if module_name else pname
            unfrozen.setdefault(group, []).append(path)

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
            for pname, parameter in direct:
                unfreeze("all" if everything else "head", name, pname, parameter)
            continue
        if is_norm(module) and "norm" in trainable:
            for pname, parameter in direct:
                unfreeze("norm", name, pname, parameter)
        if "bias" in trainable:
            for pname, parameter in direct:
                if pname == "bias":
                    unfreeze("bias", name, pname, parameter)
    return unfrozen


def _has_matrix_weight(module: nn.Module) -> bool:
    weight = module._parameters.get("weight")
    return weight is not None and weight.dim() >= 2


def adapt(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Replace every eligible layer of `model` by an adapter layer and freeze the base weights.

    Eligible layers are `nn.Linear` / `nn.Conv1d/2d/3d` for SPLoRA and fine-pruning, `nn.Linear`
    for SPLoPA (a `transformers` `Conv1D` is adapted as its equivalent `nn.Linear`), selected by
    `config.target_modules` / `exclude_modules`; other layers with a weight matrix (except
    embeddings) are listed in `AdaptReport.skipped`; the task head is never
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
        transposed = is_transposed_linear(module)
        if not name or not (transposed or isinstance(module, nn.Linear | nn.modules.conv._ConvNd)):
            if name and _has_matrix_weight(module) and not isinstance(module, nn.Embedding):
                if not explicit or matches(name, config.target_modules):
                    report.skipped[name] = f"{type(module).__name__} is not an adaptable layer"
            continue
        if explicit and not matches(name, config.target_modules):
            continue
        if matches(name, config.exclude_modules):
            continue
        if any(name == h or name.startswith(h + ".") for h in head):
            report.skipped[name] = "task head (trained fully, not adapted)"
            continue
        if transposed and nn.Linear in eligible:
            report.linearised.append(name)
            module = as_linear(module)
        elif not isinstance(module, eligible):
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
    report.trainable = set_trainable(model, config.trainable, head)
    model.spa_report = report
    logger.info(report.summary())
    return model
