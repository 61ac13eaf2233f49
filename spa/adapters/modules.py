"""Module-tree helpers shared across spa: selections, the task head, replacing a submodule."""

from __future__ import annotations

import re

import torch
from torch import nn

from spa.adapters.config import ModuleSelection

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


def is_weightless_norm(module: nn.Module) -> bool:
    """True for a norm class without tensors that normalises one last axis of the size in its
    `normalized_shape` (OLMo's `OlmoLayerNorm`, which has no weight and no bias)."""
    shape = getattr(module, "normalized_shape", None)
    return (
        "Norm" in type(module).__name__
        and not isinstance(module, NORM_TYPES)
        and not module._parameters
        and isinstance(shape, tuple)
        and len(shape) == 1
        and isinstance(shape[0], int)
    )


def norm_channels(module: nn.Module) -> int:
    """The channels of a last-axis norm (`is_last_axis_norm`): its weight's, or for a weightless
    norm its `normalized_shape`'s."""
    weight = getattr(module, "weight", None)
    return module.normalized_shape[-1] if weight is None else weight.shape[-1]


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


def in_head(name: str, head: list[str]) -> bool:
    """True if module `name` is one of the `head` modules or inside one."""
    return any(name == h or name.startswith(h + ".") for h in head)


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` at dotted path `name` of `model` (in place).

    Args:
        model: the root module.
        name: dotted path of an existing submodule.
        module: its replacement.
    """
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def narrow_tensor(module: nn.Module, name: str, kept: torch.Tensor, dim: int) -> None:
    """Keep only the `kept` indices on axis `dim` of the module's own parameter or buffer
    `name`, in place (a new tensor; a parameter keeps its `requires_grad`)."""
    is_buffer = name in module._buffers
    tensor = module._buffers[name] if is_buffer else module._parameters[name]
    with torch.no_grad():
        narrowed = tensor.index_select(dim, kept.to(tensor.device))  # a new tensor already
    if is_buffer:
        module._buffers[name] = narrowed
    else:
        module._parameters[name] = nn.Parameter(narrowed, requires_grad=tensor.requires_grad)
