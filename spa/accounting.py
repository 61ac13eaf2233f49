"""Learned-parameter accounting (dParams) exactly as DESIGN §2 defines it."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from torch import nn

from spa._checks import require_module
from spa.adapters.inject import task_head
from spa.adapters.modules import in_head, is_norm
from spa.adapters.protocols import AdapterLayer
from spa.pruning.module_masks import module_mask


@dataclass
class LearnedParameters:
    """A dParams count with its breakdown.

    Attributes:
        total: all learned parameters of the task.
        by_kind: totals per kind: "adapter" (SPLoRA factors, SPLoPA block weights and
            prototypes), "fine-pruned" (retained trained base weights), "norm", "bias", "head",
            "other" (any other trained parameter).
        by_layer: per module path, `{kind: count}`.
    """

    total: int = 0
    by_kind: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    by_layer: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, layer: str, kind: str, count: int) -> None:
        """Add `count` learned parameters of `kind` to `layer`."""
        if count == 0:
            return
        self.total += count
        self.by_kind[kind] += count
        entry = self.by_layer.setdefault(layer, defaultdict(int))
        entry[kind] += count


def _retained(module: nn.Module, parameter: nn.Parameter) -> int:
    """Entries of a plain module's parameter that survive its channel-pruning hook masks.

    `spa.pruning.apply_masks` gives norms, the head and other non-adapter modules non-persistent
    hook masks (`spa.pruning.module_masks`) until `spa.compact` slices them away.
    """
    count = parameter.numel()
    out_mask = module_mask(module, "out")
    in_mask = module_mask(module, "in")
    if out_mask is not None and parameter.dim() >= 1 and parameter.shape[0] == out_mask.numel():
        count = count // out_mask.numel() * int(out_mask.sum())
    if in_mask is not None and parameter.dim() >= 2 and parameter.shape[1] == in_mask.numel():
        count = count // in_mask.numel() * int(in_mask.sum())
    return count


def learned_parameters(model: nn.Module) -> LearnedParameters:
    """Count the task's learned parameters (dParams), honouring the current masks.

    Adapter layers count themselves per DESIGN §2 (`AdapterLayer.learned_parameter_counts`:
    SPLoRA `r (||m_row||_0 + ||m_col||_0)`, SPLoPA `R ||M_b||_0` plus prototypes once per
    sharing group, fine-pruning the retained weights, block fine-pruning `p q ||M_b||_0`);
    every other parameter with `requires_grad` counts fully, classified as head, norm, bias or
    other. A plain or compacted model counts its trainable parameters, so fine-pruned and adapted
    models are comparable.
    """
    head = task_head(model)
    result = LearnedParameters()
    seen: set[int] = set()
    shared: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, AdapterLayer):
            seen.update(id(p) for p in module.parameters())
            for kind, count in module.learned_parameter_counts(shared).items():
                result.add(name, kind, count)
            continue
        is_head = in_head(name, head)
        for pname, parameter in module.named_parameters(recurse=False):
            if id(parameter) in seen or not parameter.requires_grad:
                continue
            seen.add(id(parameter))
            if is_head:
                kind = "head"
            elif is_norm(module):
                kind = "norm"
            elif pname == "bias":
                kind = "bias"
            else:
                kind = "other"
            result.add(name, kind, _retained(module, parameter))
    return result


def count_learned_parameters(model: nn.Module) -> int:
    """The task's learned-parameter count (dParams); see `learned_parameters` for the breakdown."""
    require_module(model, "count_learned_parameters: model")
    return learned_parameters(model).total
