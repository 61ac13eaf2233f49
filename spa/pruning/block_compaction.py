"""Compaction of block-pruned BERT-style encoders: remove empty heads and FFN neurons.

After block pruning, a projection row or column whose blocks are all pruned is dead. This module
removes what that makes removable, exactly, without `transformers`' `prune_heads` (dropped in
recent releases):

- an attention head is removed when its value rows or its attention-output columns are all
  pruned. With pruned value rows the head outputs its value bias at every position (attention
  probabilities sum to 1), so `W_o[:, head] @ b_v[head]` is folded into the output bias;
- an FFN neuron `j` is removed when intermediate row `j` or output column `j` is pruned. With a
  pruned intermediate row the neuron outputs `act(b_j)`, folded into the output bias likewise.

What remains is fused into plain, dense `nn.Linear`s (pruned blocks inside them stay zero). The
attention module's `num_attention_heads` and `all_head_size` are updated; BERT's attention
forward reshapes with `-1` heads, so no other change is needed. A layer left with no head gets
`NoAttentionHeads`, which outputs an empty tensor (the output projection then yields its bias).
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from spa.adapters.density import layers_density
from spa.adapters.modules import replace_module
from spa.adapters.protocols import block_prunable_layers
from spa.errors import UnsupportedLayerError

logger = logging.getLogger(__name__)


class NoAttentionHeads(nn.Module):
    """Stands in for a self-attention module whose heads were all removed."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, None]:
        """Return an empty attention output and no attention weights.

        Args:
            hidden_states: `(batch, tokens, hidden)` input of the attention block.
            *args: ignored (attention mask and the like).
            **kwargs: ignored.

        Returns:
            `(zeros of shape (batch, tokens, 0), None)`.
        """
        return hidden_states.new_zeros(*hidden_states.shape[:-1], 0), None


@dataclass
class CompactionReport:
    """What `compact_bert` removed and what the model costs now.

    Attributes:
        parameters_before: all parameters of the fused model before compaction (real count).
        parameters_after: all parameters after compaction.
        flops_before: FLOPs of one forward pass at `sequence_length` (batch 1) of the fused,
            uncompacted model.
        flops_after: the same after compaction.
        projection_parameters_before: weights of the block-pruned projections before.
        projection_parameters_after: their weights after compaction (dense remainder).
        block_density: `spa.density` of the pruned projections (kept base weights / base
            weights), before compaction.
        removed_heads: per attention module path, the removed head indices.
        removed_neurons: per FFN path (the intermediate projection), the number removed.
        sequence_length: the sequence length the FLOPs were measured at.
    """

    parameters_before: int
    parameters_after: int
    flops_before: int
    flops_after: int
    projection_parameters_before: int
    projection_parameters_after: int
    block_density: float
    removed_heads: dict[str, list[int]] = field(default_factory=dict)
    removed_neurons: dict[str, int] = field(default_factory=dict)
    sequence_length: int = 128

    @property
    def dense_fraction(self) -> float:
        """Projection weights after compaction over before (the dense remainder, not density)."""
        return self.projection_parameters_after / max(self.projection_parameters_before, 1)

    def summary(self) -> str:
        """A human-readable multi-line summary."""
        heads = sum(len(v) for v in self.removed_heads.values())
        return "\n".join(
            [
                f"parameters: {self.parameters_before:,} -> {self.parameters_after:,}",
                f"FLOPs (seq {self.sequence_length}): {self.flops_before:,} -> "
                f"{self.flops_after:,}",
                f"density {self.block_density:.4f}; dense projection remainder "
                f"{self.dense_fraction:.4f}",
                f"removed {heads} head(s), {sum(self.removed_neurons.values())} FFN neuron(s)",
            ]
        )


# PyTorch's counter knows the GPU attention kernels only; the CPU kernel has the same cost.
def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops
}


def count_flops(model: nn.Module, sequence_length: int = 128) -> int:
    """FLOPs of one forward pass of a BERT-style model on a batch of one sequence.

    Measured with `torch.utils.flop_counter.FlopCounterMode`: matrix products and attention
    (`2 * L^2 * d` per head each for `Q K^T` and `P V`); element-wise operations are not counted.

    Args:
        model: a model taking `input_ids`.
        sequence_length: tokens in the sequence.

    Returns:
        The FLOP count.
    """
    device = next(model.parameters()).device
    input_ids = torch.ones(1, sequence_length, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION_FLOPS)
    with torch.no_grad(), counter:
        model(input_ids=input_ids)
    model.train(was_training)
    return counter.get_total_flops()


def _dead_rows_cols(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per block layer: (row fully pruned, column fully pruned) boolean vectors."""
    dead = {}
    for name, layer in block_prunable_layers(model):
        mask = layer.weight_mask()
        dead[name] = (~mask.any(dim=1), ~mask.any(dim=0))
    return dead


def _fuse_block_layers(model: nn.Module) -> None:
    for name, layer in list(block_prunable_layers(model)):
        layer.block_gate = None
        with torch.no_grad():
            weight = layer.fused_weight().detach().clone()
            bias = layer.fused_bias()
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            linear = linear.to(device=weight.device, dtype=weight.dtype)
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias)
        replace_module(model, name, linear)


def _sliced(linear: nn.Linear, rows: torch.Tensor | None, cols: torch.Tensor | None) -> nn.Linear:
    weight, bias = linear.weight.detach(), linear.bias
    if rows is not None:
        weight = weight[rows]
        bias = None if bias is None else bias.detach()[rows]
    if cols is not None:
        weight = weight[:, cols]
    with warnings.catch_warnings():  # an emptied layer (0 features) warns on initialisation
        warnings.simplefilter("ignore", UserWarning)
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    new = new.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def _dead(dead: dict, name: str, axis: int, size: int) -> torch.Tensor:
    if name in dead:
        return dead[name][axis]
    return torch.zeros(size, dtype=torch.bool)


def _fold_into_bias(output: nn.Linear, columns: torch.Tensor, values: torch.Tensor) -> None:
    """Add `output.weight[:, columns] @ values` to the output bias (constant inputs)."""
    if not bool(columns.any()):
        return
    with torch.no_grad():
        if output.bias is None:
            output.bias = nn.Parameter(torch.zeros_like(output.weight[:, 0]))
        output.bias += output.weight[:, columns] @ values


def _compact_attention(model, path: str, attention: nn.Module, dead: dict) -> list[int]:
    self_attention, output = attention.self, attention.output.dense
    heads, size = self_attention.num_attention_heads, self_attention.attention_head_size
    value_rows_dead = _dead(dead, f"{path}.self.value", 0, heads * size).reshape(heads, size)
    output_cols_dead = _dead(dead, f"{path}.output.dense", 1, heads * size).reshape(heads, size)
    removed = [h for h in range(heads) if value_rows_dead[h].all() or output_cols_dead[h].all()]
    if not removed:
        return []
    fold = torch.zeros(heads * size, dtype=torch.bool)
    for h in removed:
        if value_rows_dead[h].all() and not output_cols_dead[h].all():
            fold[h * size : (h + 1) * size] = True
    value = self_attention.value
    if value.bias is not None:
        _fold_into_bias(output, fold, value.bias.detach()[fold])
    kept = torch.ones(heads * size, dtype=torch.bool)
    for h in removed:
        kept[h * size : (h + 1) * size] = False
    if not bool(kept.any()):
        replace_module(model, f"{path}.self", NoAttentionHeads())
    else:
        for projection in ("query", "key", "value"):
            setattr(
                self_attention, projection, _sliced(getattr(self_attention, projection), kept, None)
            )
        self_attention.num_attention_heads = heads - len(removed)
        self_attention.all_head_size = self_attention.num_attention_heads * size
    attention.output.dense = _sliced(output, None, kept)
    return removed


def _compact_ffn(path: str, layer: nn.Module, dead: dict) -> int:
    intermediate, output = layer.intermediate.dense, layer.output.dense
    width = intermediate.out_features
    rows_dead = _dead(dead, f"{path}.intermediate.dense", 0, width)
    cols_dead = _dead(dead, f"{path}.output.dense", 1, width)
    removed = rows_dead | cols_dead
    if not bool(removed.any()):
        return 0
    fold = rows_dead & ~cols_dead
    if bool(fold.any()):
        bias = intermediate.bias
        constant = torch.zeros(int(fold.sum())) if bias is None else bias.detach()[fold]
        _fold_into_bias(output, fold, layer.intermediate.intermediate_act_fn(constant))
    kept = ~removed
    layer.intermediate.dense = _sliced(intermediate, kept, None)
    layer.output.dense = _sliced(output, None, kept)
    return int(removed.sum())


def _encoder_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    layers = []
    for name, module in model.named_modules():
        attention = getattr(module, "attention", None)
        if attention is None or not hasattr(module, "intermediate"):
            continue
        if not hasattr(getattr(attention, "self", None), "num_attention_heads"):
            continue
        layers.append((name, module))
    return layers


def _projection_parameters(model: nn.Module, names: list[str]) -> int:
    total = 0
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue  # removed with its attention module
        weight = module.base.weight if hasattr(module, "base") else module.weight
        total += weight.numel()
    return total


def compact_bert(
    model: nn.Module, sequence_length: int = 128
) -> tuple[nn.Module, CompactionReport]:
    """A compacted copy of a block-pruned BERT-style model, and a report of what it costs.

    The copy gives the same outputs as the masked model (in eval mode) with fewer parameters
    and FLOPs; `model` itself is left untouched.

    Args:
        model: a model whose encoder layers have `attention.self.{query,key,value}`,
            `attention.output.dense`, `intermediate.dense` and `output.dense` (BERT, RoBERTa,
            ELECTRA, ...), with block layers from `SPLoPAConfig` or `wrap_block_fine_pruning`.
        sequence_length: sequence length at which FLOPs are measured.

    Returns:
        `(compacted model, CompactionReport)`.

    Raises:
        UnsupportedLayerError: if the model has no BERT-style encoder layer.
    """
    compacted = copy.deepcopy(model)
    encoder_layers = _encoder_layers(compacted)
    if not encoder_layers:
        raise UnsupportedLayerError(
            f"{type(model).__name__}: no BERT-style encoder layer (attention.self with "
            "num_attention_heads, intermediate, output) found; compact_bert cannot compact it"
        )
    block_layers = dict(block_prunable_layers(compacted))
    names = list(block_layers)
    density = layers_density(block_layers.values())
    projection_before = _projection_parameters(compacted, names)
    dead = _dead_rows_cols(compacted)
    _fuse_block_layers(compacted)
    # "Before" is the fused, uncompacted model: what deploying without compaction would cost.
    parameters_before = sum(p.numel() for p in compacted.parameters())
    flops_before = count_flops(compacted, sequence_length)
    report = CompactionReport(
        parameters_before=parameters_before,
        parameters_after=0,
        flops_before=flops_before,
        flops_after=0,
        projection_parameters_before=projection_before,
        projection_parameters_after=0,
        block_density=density,
        sequence_length=sequence_length,
    )
    for path, layer in encoder_layers:
        removed = _compact_attention(compacted, f"{path}.attention", layer.attention, dead)
        if removed:
            report.removed_heads[f"{path}.attention"] = removed
        neurons = _compact_ffn(path, layer, dead)
        if neurons:
            report.removed_neurons[f"{path}.intermediate.dense"] = neurons
    report.parameters_after = sum(p.numel() for p in compacted.parameters())
    report.projection_parameters_after = _projection_parameters(compacted, names)
    report.flops_after = count_flops(compacted, sequence_length)
    logger.info("compact_bert:\n%s", report.summary())
    return compacted, report
