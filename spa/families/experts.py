"""Mixture-of-experts FFNs as one `nn.Linear` pair per expert (issue 21 item 3).

`transformers` stores a block's experts as two 3-D parameters: `gate_up_proj` (experts x 2I x
H, each expert's rows `[gate | up]`) and `down_proj` (experts x H x I). spa's adapters, masks,
criteria, compaction and bundles work on linear layers, so `split_experts` replaces each such
module by a `SplitExperts` holding expert `e`'s projections as `gate_up[e]` and `down[e]`:
plain `nn.Linear` layers whose weights are views of the 3-D parameters (no copy). The routing
is the model's own (its router is untouched) and `SplitExperts.forward` runs the same loop
over the routed experts, so the split model computes what the original does.

Every adapter kind then adapts each expert's projections like any other layer (SPLoRA's Eq. 4
per expert, one implementation), each expert's neurons are one FFN unit group, and compaction
gives every expert the neurons it keeps (experts may keep different numbers, no padding).
FLOPs are measured on the layers that run (`spa.count_flops`), so an expert counts only for
the tokens routed to it: the top-k experts per token.

`spa.adapt` splits the model it adapts; `save_task`, `load_task` and `TaskHost` read a base
with 3-D experts through a split structural copy (`spa.tasks.expert_view.split_view`: shared
tensors, the base itself unchanged), so a base is fingerprinted the same split or not.
"""

from __future__ import annotations

import torch
from torch import nn

# Expert modules whose rows are `[gate | up]` (`.chunk(2)` in their forward), by class name:
# the fused layout cannot be read from the shapes, so only these are split.
CHUNKED_EXPERTS = frozenset(
    {"MixtralExperts", "Qwen2MoeExperts", "Qwen3MoeExperts", "OlmoeExperts"}
)


class SplitExperts(nn.Module):
    """A block's experts as one `[gate | up]` and one down `nn.Linear` per expert.

    Attributes:
        num_experts: experts (the router's output width).
        gate_up: per expert, a Linear from the hidden size to `[gate | up]` (2 x its neurons).
        down: per expert, a Linear from its neurons back to the hidden size.
        act_fn: the activation applied to the gate.
    """

    def __init__(self, gate_up: list[nn.Module], down: list[nn.Module], act_fn: nn.Module):
        super().__init__()
        self.num_experts = len(gate_up)
        self.gate_up = nn.ModuleList(gate_up)
        self.down = nn.ModuleList(down)
        self.act_fn = act_fn

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        """The routed experts' outputs, weighted by their routing weights and summed per token.

        Args:
            hidden_states: tokens x hidden size.
            top_k_index: tokens x k chosen experts.
            top_k_weights: tokens x k routing weights.
        """
        final = torch.zeros_like(hidden_states)
        for expert in torch.unique(top_k_index).tolist():
            token, slot = torch.where(top_k_index == expert)
            gate, up = self.gate_up[expert](hidden_states[token]).chunk(2, dim=-1)
            out = self.down[expert](self.act_fn(gate) * up)
            out = out * top_k_weights[token, slot, None]
            final.index_add_(0, token, out.to(final.dtype))
        return final


def _linear(weight: torch.Tensor) -> nn.Linear:
    """A bias-free Linear whose weight is `weight` itself (a view: no copy)."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    layer.weight = nn.Parameter(weight, requires_grad=weight.requires_grad)
    return layer


def split(module: nn.Module) -> SplitExperts:
    """`module`'s experts as a `SplitExperts` sharing its weights.

    Args:
        module: an experts module of a class in `CHUNKED_EXPERTS`.
    """
    gate_up, down = module.gate_up_proj.data, module.down_proj.data
    return SplitExperts(
        [_linear(gate_up[e]) for e in range(gate_up.shape[0])],
        [_linear(down[e]) for e in range(down.shape[0])],
        module.act_fn,
    )


def unsplit_experts(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The 3-D experts modules of `model` that `split_experts` would replace (path, module)."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if name and type(module).__name__ in CHUNKED_EXPERTS
    ]


def split_experts(model: nn.Module) -> list[str]:
    """Replace every 3-D experts module of `model` by a `SplitExperts` (in place, no copy).

    Split models compute the same outputs; a model without such modules is left unchanged.

    Args:
        model: a `transformers` model (possibly wrapped).

    Returns:
        The paths of the modules replaced.
    """
    found = unsplit_experts(model)
    for name, module in found:
        model.set_submodule(name, split(module))
    return [name for name, _ in found]
