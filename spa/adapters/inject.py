"""`adapt(model, config)`: replace eligible layers by adapter layers and freeze the base."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from torch import nn

from spa._checks import require_module
from spa.adapters.config import AdapterConfig
from spa.adapters.modules import find_head, in_head, is_norm, matches, replace_module
from spa.adapters.protocols import AdapterLayer, is_adapted
from spa.adapters.rank_bounds import rank_caps, warn_capped
from spa.adapters.registry import kind_for_config
from spa.adapters.transposed import as_linear, is_transposed_linear
from spa.errors import ConfigError, NoTargetsError, SpaError
from spa.families.experts import split_experts

logger = logging.getLogger(__name__)

# Attribute under which `adapt` leaves its report on the model; read it with `adapt_report`.
_REPORT_ATTRIBUTE = "spa_report"


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
    # 3-D experts modules split into per-expert Linear layers (spa.families.experts).
    split_experts: list[str] = field(default_factory=list)
    # Adapted layers whose asked rank exceeded their width -> the rank they got (issue 24).
    capped_ranks: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """A human-readable multi-line summary."""
        lines = [f"adapted {len(self.adapted)} layer(s) with {type(self.config).__name__}"]
        lines += [f"  skipped {name}: {reason}" for name, reason in self.skipped.items()]
        lines += [
            f"  rank capped at {name}'s width: {rank}" for name, rank in self.capped_ranks.items()
        ]
        lines += [
            f"  trainable {group}: {len(names)} parameter tensor(s)"
            for group, names in self.trainable.items()
        ]
        return "\n".join(lines)


def adapt_report(model: nn.Module) -> AdaptReport | None:
    """The `AdaptReport` that `adapt` left on `model`, or None for a model it did not adapt."""
    return getattr(model, _REPORT_ATTRIBUTE, None)


def task_head(model: nn.Module) -> list[str]:
    """The task head of `model`: the one `adapt` recorded, else the last `nn.Linear`."""
    report = adapt_report(model)
    return list(report.head) if report is not None else find_head(model, None)


def set_trainable(
    model: nn.Module, trainable: tuple[str, ...], head: list[str]
) -> dict[str, list[str]]:
    """Freeze everything, then unfreeze adapter parameters and the configured groups.

    Each adapter layer names what it trains (`AdapterLayer.trainable_parameters`: adapter
    factors, or the weight itself for fine-pruning kinds). Norms are found with `is_norm` (any
    norm class with an affine weight, RMSNorm included).

    Returns:
        Per group ("all", "head", "norm", "bias"), the paths of the parameters it unfroze.
    """
    unfrozen: dict[str, list[str]] = {}

    def unfreeze(group: str, module_name: str, pname: str, parameter: nn.Parameter) -> None:
        if not parameter.requires_grad:
            parameter.requires_grad_(True)
            path = f"{module_name}.{pname}" if module_name else pname
            unfrozen.setdefault(group, []).append(path)

    for parameter in model.parameters():
        parameter.requires_grad_(False)
    everything = "all" in trainable
    for name, module in model.named_modules():
        direct = list(module.named_parameters(recurse=False))
        if isinstance(module, AdapterLayer):
            for parameter in module.trainable_parameters():
                parameter.requires_grad_(True)
            continue
        if everything or (in_head(name, head) and "head" in trainable):
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

    The adapter kind is the one registered for `type(config)` in `ADAPTER_KINDS`. Eligible
    layers are the kind's layer types (`nn.Linear` / `nn.Conv1d/2d/3d` for SPLoRA and
    fine-pruning, `nn.Linear` for SPLoPA and block fine-pruning; a `transformers` `Conv1D` is
    adapted as its equivalent `nn.Linear`; a mixture of experts' 3-D experts are first split
    into per-expert `nn.Linear` layers, `spa.families.split_experts`), selected by
    `config.target_modules` / `exclude_modules`; other layers with a weight matrix (except
    embeddings) are listed in `AdaptReport.skipped`; the task head is never adapted (it trains
    fully when "head" is in `config.trainable`). All parameters are frozen, then adapter
    parameters and `config.trainable` groups are unfrozen. The model is modified in place and
    returned; `adapt_report(model)` gives the `AdaptReport`.

    A kind with a per-layer rank (SPLoRA) gives each layer at most its width, `min(out,
    in/groups)` of its weight matrix (a larger rank adds parameters, never capacity): capped
    layers are listed in `AdaptReport.capped_ranks` and named in one `SpaWarning`
    (`spa.adapters.rank_bounds`).

    Raises:
        RankError: if the rank exceeds the width of every layer to adapt (a `ConfigError`).
        ConfigError: if the model is already adapted, a selection matches nothing, or no kind
            accepts `config`.
        NoTargetsError: if no layer could be adapted.
        UnsupportedLayerError: if an explicitly targeted layer cannot be adapted.
    """
    require_module(model, "adapt: model")
    kind = kind_for_config(config)
    if is_adapted(model):
        raise ConfigError("model is already adapted; adapt a fresh copy of the base model")
    head = find_head(model, config.head_modules)
    if config.head_modules and not head:  # an empty list: a model without a task head
        raise ConfigError(f"head_modules={config.head_modules!r} matches no module")
    report = AdaptReport(config=config, head=head, split_experts=split_experts(model))
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
        if in_head(name, head):
            trained = "head" in config.trainable or "all" in config.trainable
            report.skipped[name] = (
                f"task head ({'trained fully' if trained else 'frozen'}, not adapted)"
            )
            continue
        if transposed and issubclass(nn.Linear, kind.layer_types):
            report.linearised.append(name)
            # A view of the Conv1D's weight, not a copy: a task model then shares GPT-2's base
            # storage too (issue 22); `task_model` gives a weight that trains its own copy.
            module = as_linear(module, share=True)
        elif not isinstance(module, kind.layer_types):
            report.skipped[name] = (
                f"{type(module).__name__} is not supported by {type(config).__name__}"
            )
            continue
        candidates.append((name, module))
    caps = rank_caps(kind, config, candidates)
    context: dict = {}
    for name, module in candidates:
        try:
            layer = kind.make_layer(module, config, name, context)
        except SpaError as error:
            if explicit:
                raise
            report.skipped[name] = str(error)
            continue
        replace_module(model, name, layer)
        report.adapted.append(name)
    if not report.adapted:
        raise NoTargetsError(
            f"{type(config).__name__}: no layer was adapted (target_modules="
            f"{config.target_modules!r}, exclude_modules={config.exclude_modules!r}); skipped: "
            f"{report.skipped or 'none'}"
        )
    report.capped_ranks = {name: caps[name][1] for name in report.adapted if name in caps}
    warn_capped({name: caps[name] for name in report.capped_ranks}, len(report.adapted))
    report.trainable = set_trainable(model, config.trainable, head)
    setattr(model, _REPORT_ATTRIBUTE, report)
    logger.info(report.summary())
    return model
