"""`compact_blocks`: the deployable model of a block-pruned transformer, and what it costs.

Block pruning (SPLoPA, block fine-pruning) zeroes weight blocks; the masked model is as large as
the base. `compact_blocks` fuses a copy (`spa.fuse`), removes the attention heads and FFN
neurons whose blocks are all pruned (`spa.pruning.remove_empty_units`, driven by the model
family's description in `spa.families`, so it works for every described family) and reports
parameters and FLOPs (`spa.count_flops`) before and after. Pruned blocks inside the heads and
neurons that stay remain zeros in dense tensors: the report gives that dense remainder too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from spa.adapters.density import density
from spa.adapters.protocols import is_adapted
from spa.deploy.fuse import fuse
from spa.errors import UnsupportedLayerError
from spa.families import Family, block_layouts, describe, ffn_layouts
from spa.flops import count_flops
from spa.pruning.empty_units import remove_empty_units

logger = logging.getLogger(__name__)


@dataclass
class CompactionReport:
    """What `compact_blocks` removed and what the model costs before and after.

    Attributes:
        parameters_before: all parameters of the fused model before removal.
        parameters_after: all parameters after removal.
        flops_before: FLOPs (`spa.count_flops`) of the fused model on the example inputs.
        flops_after: the same after removal.
        projection_parameters_before: weights of the blocks' attention and FFN projections
            (every projection the family description names) before removal.
        projection_parameters_after: the same after removal (the dense remainder).
        density: `spa.density` of the input model (kept base weights / base weights), or None
            for a plain model (e.g. a task from `load_task`).
        removed_heads: per attention module path, the removed query-head indices.
        removed_neurons: per FFN module path, the number of removed neurons.
    """

    parameters_before: int
    parameters_after: int
    flops_before: int
    flops_after: int
    projection_parameters_before: int
    projection_parameters_after: int
    density: float | None = None
    removed_heads: dict[str, list[int]] = field(default_factory=dict)
    removed_neurons: dict[str, int] = field(default_factory=dict)

    @property
    def dense_fraction(self) -> float:
        """Projection weights after removal over before (the dense remainder, not density)."""
        return self.projection_parameters_after / max(self.projection_parameters_before, 1)

    def summary(self) -> str:
        """A human-readable multi-line summary."""
        heads = sum(len(v) for v in self.removed_heads.values())
        density = "" if self.density is None else f"density {self.density:.4f}; "
        return "\n".join(
            [
                f"parameters: {self.parameters_before:,} -> {self.parameters_after:,}",
                f"FLOPs: {self.flops_before:,} -> {self.flops_after:,}",
                f"{density}dense projection remainder {self.dense_fraction:.4f}",
                f"removed {heads} head(s), {sum(self.removed_neurons.values())} FFN neuron(s)",
            ]
        )


def _projection_parameters(model: nn.Module, family: Family) -> int:
    total = 0
    for layout in block_layouts(model, family):
        paths = (layout.query, layout.key, layout.value, layout.qkv, layout.output)
        ffns = [p for ffn in ffn_layouts(layout) for p in (*ffn.ffn_inputs, ffn.ffn_output)]
        for path in [p for p in paths if p is not None] + ffns:
            total += model.get_submodule(path).weight.numel()
    return total


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def compact_blocks(model: nn.Module, example_inputs: Any) -> tuple[nn.Module, CompactionReport]:
    """A fused copy of a block-pruned model without its emptied heads and FFN neurons.

    The copy gives the same outputs as `model` (eval mode, float tolerance) with fewer
    parameters and FLOPs whenever a head or neuron lost all its blocks; `model` is not changed.

    Args:
        model: a model of a described family (`spa.families.FAMILIES`: BERT, ViT, GPT-2,
            Llama, ...) adapted with a block kind (`SPLoPAConfig`, `BlockFinePruningConfig`)
            and masked, or a plain task model from `load_task` / `TaskHost`.
        example_inputs: a batch the FLOPs are counted on (a tensor, tuple, or dict of keyword
            inputs such as `{"input_ids": ids}`).

    Returns:
        `(compacted plain model, CompactionReport)`.

    Raises:
        UnsupportedLayerError: if the model is of no described family.
    """
    family = describe(model)
    if family is None:
        raise UnsupportedLayerError(
            f"{type(model).__name__}: compact_blocks needs a model of a described family "
            "(spa.families.FAMILIES); this model's family is not described"
        )
    compacted = fuse(model)
    parameters_before = _parameters(compacted)
    projections_before = _projection_parameters(compacted, family)
    flops_before = count_flops(compacted, example_inputs)
    removal = remove_empty_units(compacted)
    report = CompactionReport(
        parameters_before=parameters_before,
        parameters_after=_parameters(compacted),
        flops_before=flops_before,
        flops_after=count_flops(compacted, example_inputs),
        projection_parameters_before=projections_before,
        projection_parameters_after=_projection_parameters(compacted, family),
        density=density(model) if is_adapted(model) else None,
        removed_heads=removal.removed_heads,
        removed_neurons=removal.removed_neurons,
    )
    logger.info("compact_blocks:\n%s", report.summary())
    return compacted, report
