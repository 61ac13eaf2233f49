"""Learned-parameter accounting (dParams) exactly as DESIGN §2 defines it."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from torch import nn

from spa.adapters.base import ADAPTER_TYPES
from spa.adapters.block_fine_pruning import BlockMaskedLinear
from spa.adapters.inject import find_head, is_norm
from spa.adapters.splopa import SPLoPALinear
from spa.adapters.splora import SPLoRALayer


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


def _count_splora(result: LearnedParameters, name: str, layer: SPLoRALayer) -> None:
    rows, cols = int(layer.out_mask.sum()), int(layer.in_mask.sum())
    if layer.rank > 0 and layer.down.requires_grad:
        result.add(name, "adapter", layer.rank * (rows + cols))  # r (||m_row|| + ||m_col||)
    weight = layer.base.weight
    if weight.requires_grad:
        kernel = weight[0, 0].numel()
        result.add(name, "fine-pruned", rows * cols * kernel)
    bias = layer.base.bias
    if bias is not None and bias.requires_grad:
        result.add(name, "bias", rows)


def _count_splopa(result: LearnedParameters, name: str, layer: SPLoPALinear, banks: set) -> None:
    kept = int(layer.block_mask.sum())
    if layer.block_weights.requires_grad:
        result.add(name, "adapter", layer.block_weights.shape[0] * kept)  # R ||M_b||
    bank = layer.prototypes
    if id(bank) not in banks and bank.row_factors.requires_grad:
        banks.add(id(bank))
        result.add(name, "adapter", bank.row_factors.numel() + bank.col_factors.numel())
    rows, cols = layer.block_shape
    if layer.base.weight.requires_grad:
        result.add(name, "fine-pruned", rows * cols * kept)
    bias = layer.base.bias
    if bias is not None and bias.requires_grad:
        result.add(name, "bias", bias.numel())


def _count_block_fine_pruning(result: LearnedParameters, name: str, layer: nn.Module) -> None:
    rows, cols = layer.block_shape
    if layer.base.weight.requires_grad:
        result.add(name, "fine-pruned", rows * cols * int(layer.block_mask.sum()))  # p q ||M_b||
    bias = layer.base.bias
    if bias is not None and bias.requires_grad:
        result.add(name, "bias", bias.numel())


def _retained(module: nn.Module, parameter: nn.Parameter) -> int:
    """Entries of a plain module's parameter that survive its channel-pruning hook masks.

    `spa.pruning.apply_masks` gives norms, the head and other non-adapter modules non-persistent
    `spa_out_mask` / `spa_in_mask` buffers until `spa.compact` slices them away.
    """
    count = parameter.numel()
    out_mask = getattr(module, "spa_out_mask", None)
    in_mask = getattr(module, "spa_in_mask", None)
    if out_mask is not None and parameter.dim() >= 1 and parameter.shape[0] == out_mask.numel():
        count = count // out_mask.numel() * int(out_mask.sum())
    if in_mask is not None and parameter.dim() >= 2 and parameter.shape[1] == in_mask.numel():
        count = count // in_mask.numel() * int(in_mask.sum())
    return count


def learned_parameters(model: nn.Module) -> LearnedParameters:
    """Count the task's learned parameters (dParams), honouring the current masks.

    Adapter layers count per DESIGN §2 (SPLoRA `r (||m_row||_0 + ||m_col||_0)`, SPLoPA
    `R ||M_b||_0` plus prototypes once per sharing group, fine-pruning the retained weights,
    block fine-pruning `p q ||M_b||_0`);
    every other parameter with `requires_grad` counts fully, classified as head, norm, bias or
    other. A plain or compacted model counts its trainable parameters, so fine-pruned and adapted
    models are comparable.
    """
    report = getattr(model, "spa_report", None)
    head = report.head if report is not None else find_head(model, None)
    result = LearnedParameters()
    seen: set[int] = set()
    banks: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, BlockMaskedLinear):
            seen.update(id(p) for p in module.parameters())
            _count_block_fine_pruning(result, name, module)
            continue
        if isinstance(module, ADAPTER_TYPES):
            seen.update(id(p) for p in module.parameters())
            if isinstance(module, SPLoRALayer):
                _count_splora(result, name, module)
            else:
                _count_splopa(result, name, module, banks)
            continue
        in_head = any(name == h or name.startswith(h + ".") for h in head)
        for pname, parameter in module.named_parameters(recurse=False):
            if id(parameter) in seen or not parameter.requires_grad:
                continue
            seen.add(id(parameter))
            if in_head:
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
    return learned_parameters(model).total
