"""Split experts back into `transformers`' 3-D expert tensors, for `spa.save_pretrained`.

`spa.adapt` holds a block's experts as one `[gate | up]` and one down `nn.Linear` per expert
(`spa.families.experts.SplitExperts`), and compaction gives each expert the neurons it keeps.
`transformers` stores them as `gate_up_proj` (experts x 2I x H, each expert's rows
`[gate | up]`) and `down_proj` (experts x H x I) with one width `I` for every expert of every
layer. An expert that keeps fewer neurons is padded with zero neurons up to the widest: a
padded neuron has zero gate and up rows and a zero down column, so its output `act(0) * 0` is
multiplied by zero and the experts compute exactly what the split ones did (the exported model
is checked against the compacted one). The padding costs compute, so a warning says how much.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from spa.errors import ConfigError, SpaWarning
from spa.families.experts import SplitExperts


def _split_modules(model: nn.Module) -> list[tuple[str, SplitExperts]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SplitExperts)]


def _width(layer: nn.Module) -> int:
    return layer.weight.shape[0] // 2  # `[gate | up]` rows


def stack_experts(
    model: nn.Module, state: dict[str, torch.Tensor], wanted: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """`state` (`model.state_dict()`) with every split experts module's per-expert weights
    replaced by `transformers`' 3-D `gate_up_proj` and `down_proj`, padded to the width the
    exported config gives them.

    Args:
        model: a fused, compacted model whose experts are split (unchanged).
        state: its state dict (a new dict is returned).
        wanted: the state dict (meta tensors suffice) of the model the config builds.

    Returns:
        The state dict `transformers`' experts modules load; the model itself if it has no
        split experts. Warns (`SpaWarning`) with the fraction of padding neurons, if any.

    Raises:
        ConfigError: if an expert's layer has a bias (transformers' experts have none).
    """
    found = _split_modules(model)
    if not found:
        return state
    for name, module in found:
        for index, layer in enumerate([*module.gate_up, *module.down]):
            if getattr(layer, "bias", None) is not None:
                part = "gate_up" if index < module.num_experts else "down"
                raise ConfigError(
                    f"save_pretrained: {name}.{part}.{index % module.num_experts} has a bias "
                    "(constant neurons folded in); transformers' experts have none"
                )
    widths = [[_width(layer) for layer in module.gate_up] for _, module in found]
    widest = max(max(row) for row in widths)
    key = f"{found[0][0]}.gate_up_proj"
    width = wanted[key].shape[1] // 2 if key in wanted else widest
    if width < widest:
        raise ConfigError(
            f"save_pretrained: the exported config gives experts {width} neurons, "
            f"{found[0][0]} keeps up to {widest}; the config cannot describe this model"
        )
    state = dict(state)
    for name, module in found:
        for key in list(state):
            if key.startswith(f"{name}.gate_up.") or key.startswith(f"{name}.down."):
                del state[key]
        state[f"{name}.gate_up_proj"], state[f"{name}.down_proj"] = _stacked(module, width)
    total = width * sum(len(row) for row in widths)
    padding = total - sum(sum(row) for row in widths)
    if padding:
        narrowest = min(min(row) for row in widths)
        kept = f"{widest}" if narrowest == widest else f"{narrowest} to {widest}"
        warnings.warn(
            f"save_pretrained: experts keep {kept} neurons; transformers holds "
            f"one width for every expert, so they are padded with zero neurons to {width}: "
            f"{padding / total:.1%} of the exported expert neurons are padding (exact, but "
            "computed); ranking='local' and widths that are multiples of 16 bytes avoid it",
            SpaWarning,
            stacklevel=3,
        )
    return state


def _stacked(module: SplitExperts, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(gate_up_proj, down_proj) of one block: experts x 2 width x hidden, experts x hidden x
    width, each expert's neurons first and zero neurons after them."""
    first = module.gate_up[0].weight
    hidden = first.shape[1]
    count = module.num_experts
    gate_up = first.new_zeros(count, 2 * width, hidden)
    down = first.new_zeros(count, module.down[0].weight.shape[0], width)
    for expert in range(count):
        kept = _width(module.gate_up[expert])
        gate, up = module.gate_up[expert].weight.detach().chunk(2, dim=0)
        gate_up[expert, :kept] = gate
        gate_up[expert, width : width + kept] = up
        down[expert, :, :kept] = module.down[expert].weight.detach()
    return gate_up, down
