"""Remove attention heads and FFN neurons that block pruning emptied, for every described family.

After block pruning (SPLoPA, block fine-pruning) a projection row or column whose blocks are
all pruned is exactly zero once fused. `remove_empty_units` works on the plain model (`spa.fuse`
of a trained model, or a task from `load_task` / `TaskHost`), reads which units are dead from
the zero weights and removes them exactly:

- a head channel (a key/value head with its query heads, see `spa.pruning.units`) goes when all
  its output-projection columns are zero, or when its value rows are zero: every query head
  then outputs its value bias at every position (attention probabilities sum to 1), so
  `W_o[:, head] @ b_v[head]` is folded into the output projection's bias;
- an FFN neuron goes when its down column is zero, or when its input row is zero: with one
  input projection it outputs `act(b)` (folded into the down bias likewise); with gated inputs
  (up, gate) it outputs zero when the zero row has no bias and `act(0) == 0`.

Removal reuses the channel machinery (masks on plain Linear layers, then `compact`, which also
updates the described count attributes). One head channel and one neuron per block always stay
(unchanged, so exact), so no projection becomes empty. `spa.deploy.compact_blocks` is the
deployment entry point built on it (fused copy plus a parameter / FLOPs report).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from spa.adapters.protocols import is_adapted
from spa.errors import ConfigError, UnsupportedLayerError
from spa.families import (
    BlockLayout,
    block_layouts,
    describe,
    ffn_layouts,
    ffn_neurons,
    head_counts,
    head_rows,
    module_rows,
)
from spa.pruning.compaction import compact
from spa.pruning.masking import apply_masks
from spa.pruning.units import DEFAULT_UNITS, unit_groups


@dataclass
class UnitRemoval:
    """What `remove_empty_units` removed.

    Attributes:
        removed_heads: per attention module path, the removed query-head indices.
        removed_neurons: per FFN module path, the number of removed neurons.
        parameters_before: parameter count before removal.
        parameters_after: parameter count after removal.
    """

    removed_heads: dict[str, list[int]] = field(default_factory=dict)
    removed_neurons: dict[str, int] = field(default_factory=dict)
    parameters_before: int = 0
    parameters_after: int = 0


def _linear(model: nn.Module, path: str) -> nn.Linear:
    module = model.get_submodule(path)
    if not isinstance(module, nn.Linear):
        raise UnsupportedLayerError(
            f"{path}: remove_empty_units needs plain nn.Linear projections, got "
            f"{type(module).__name__}; call spa.fuse(model) first"
        )
    return module


def _zero_rows(linear: nn.Linear) -> torch.Tensor:
    return (linear.weight == 0).all(dim=1)


def _zero_columns(linear: nn.Linear) -> torch.Tensor:
    return (linear.weight == 0).all(dim=0)


def _fold(output: nn.Linear, columns: list[int], values: torch.Tensor) -> None:
    """Add `output.weight[:, columns] @ values` to the output bias (constant inputs)."""
    if output.bias is None:
        output.bias = nn.Parameter(torch.zeros_like(output.weight[:, 0]), requires_grad=False)
    with torch.no_grad():
        output.bias += output.weight[:, columns] @ values.to(output.weight.dtype)


def _dead_heads(model: nn.Module, layout: BlockLayout) -> set[int]:
    heads = head_rows(layout, module_rows(model))
    output, value = _linear(model, heads.output), _linear(model, heads.value)
    dead_columns, dead_rows = _zero_columns(output), _zero_rows(value)

    def columns(j: int) -> list[int]:
        kept = range(j * heads.groups, (j + 1) * heads.groups)
        return [c for head in kept for c in heads.output_columns(head)]

    dead = set()
    for j in range(heads.kv_heads):
        if bool(dead_columns[columns(j)].all()) or bool(dead_rows[heads.value_rows(j)].all()):
            dead.add(j)
    if len(dead) == heads.kv_heads:
        dead.discard(min(dead))  # keep one head channel, unchanged
    for j in dead:
        rows = list(heads.value_rows(j))
        if value.bias is not None and not bool(dead_columns[columns(j)].all()):
            _fold(output, columns(j), value.bias.detach()[rows].repeat(heads.groups))
    return dead


def _dead_neurons(model: nn.Module, layout: BlockLayout) -> set[int]:
    neurons = ffn_neurons(layout, module_rows(model))
    # One (linear, rows of each neuron) per input part: a fused [gate | up] gives two.
    inputs = [
        (_linear(model, path), part * neurons)
        for path in layout.ffn_inputs
        for part in range(layout.ffn_chunks)
    ]
    output = _linear(model, layout.ffn_output)
    activation = (
        None if layout.ffn_activation is None else model.get_submodule(layout.ffn_activation)
    )
    dead_columns = _zero_columns(output)
    rows = [_zero_rows(linear)[offset : offset + neurons] for linear, offset in inputs]
    dead, folds = set(), {}
    silent = activation is not None and float(activation(torch.zeros(1))) == 0.0
    for i in range(neurons):
        if bool(dead_columns[i]):
            dead.add(i)
        elif activation is not None and len(inputs) == 1 and bool(rows[0][i]):
            bias = inputs[0][0].bias
            constant = torch.zeros(1) if bias is None else bias.detach()[i : i + 1]
            dead.add(i)
            folds[i] = activation(constant)
        elif silent and len(inputs) > 1:
            for (linear, offset), zero in zip(inputs, rows):
                no_bias = linear.bias is None or float(linear.bias[offset + i]) == 0.0
                if bool(zero[i]) and no_bias:
                    dead.add(i)
                    break
    if len(dead) == neurons:
        dead.discard(min(dead))  # keep one neuron, unchanged
    for i, value in folds.items():
        if i in dead:
            _fold(output, [i], value)
    return dead


def remove_empty_units(model: nn.Module) -> UnitRemoval:
    """Remove the heads and FFN neurons block pruning emptied, in place (outputs unchanged).

    Args:
        model: a plain model of a described family: `spa.fuse(model)` of a block-pruned model,
            or a task from `load_task` / `TaskHost`.

    Returns:
        What was removed.

    Raises:
        UnsupportedLayerError: if the model is of no described family or a projection is not a
            plain `nn.Linear`.
        ConfigError: if the model still has adapter layers (fuse it first).
    """
    family = describe(model)
    if family is None:
        raise UnsupportedLayerError(
            f"{type(model).__name__}: remove_empty_units needs a model of a described family "
            "(spa.families.FAMILIES); this model's family is not described"
        )
    if is_adapted(model) or any(hasattr(m, "block_mask") for m in model.modules()):
        raise ConfigError("remove_empty_units: fuse the model first (spa.fuse(model))")
    report = UnitRemoval(parameters_before=sum(p.numel() for p in model.parameters()))
    # Heads fixed, or tied across blocks (dead in one block is not dead in all): FFN only.
    fixed = family.attention.fixed_heads or family.attention.tied_heads
    groups = unit_groups(model, family, ("ffn",) if fixed else DEFAULT_UNITS)
    layouts = {layout.path: layout for layout in block_layouts(model, family)}
    masks: dict[str, dict[str, torch.Tensor]] = {}
    for group in groups:
        layout = layouts[_block_of(group.root, layouts)]
        heads = group.unit == "heads"
        if not heads:  # the group's own FFN (an expert's, in a mixture of experts)
            layout = next(f for f in ffn_layouts(layout) if f.ffn_inputs[0] == group.root)
        dead = _dead_heads(model, layout) if heads else _dead_neurons(model, layout)
        if not dead:
            continue
        counts = head_counts(model, layout)
        if heads:
            groups_per_kv = counts["kv_groups"]
            report.removed_heads[layout.attention] = sorted(
                j * groups_per_kv + r for j in dead for r in range(groups_per_kv)
            )
        else:
            # Summed over the FFNs of one module (the experts of a mixture of experts).
            removed = report.removed_neurons.get(layout.ffn, 0)
            report.removed_neurons[layout.ffn] = removed + len(dead)
        for member in group.members:
            key = "in_mask" if member.role == "in" else "out_mask"
            mask = masks.setdefault(member.name, {}).setdefault(
                key, torch.ones(member.mask_size, dtype=torch.bool)
            )
            for position, channel in zip(member.positions, member.channels):
                if channel in dead:
                    mask[position] = False
    apply_masks(model, masks)
    compact(model)
    report.parameters_after = sum(p.numel() for p in model.parameters())
    return report


def _block_of(root: str, layouts: dict[str, BlockLayout]) -> str:
    for path in layouts:
        if root.startswith(path + "."):
            return path
    raise ConfigError(f"remove_empty_units: {root} belongs to no block")


def without_empty_units(model: nn.Module) -> nn.Module:
    """`remove_empty_units(model)` returning the model: a `TaskHost` / `build_task` finalizer.

    Example: `TaskHost(base, finalize=without_empty_units)` serves block-pruned tasks with
    their empty heads and neurons removed.
    """
    remove_empty_units(model)
    return model
