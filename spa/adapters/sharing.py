"""Task models that share the base's weight storage: no copy of the base (issue 22 item 1).

`spa.adapt` replaces layers of the model it is given in place, so a plain base that bundles and
task switching still need cannot be adapted itself; a `copy.deepcopy` of it doubled the memory.
`shared_copy` copies the module tree only: every parameter of the copy is a new `nn.Parameter`
object over the same storage as the original's (so flipping `requires_grad` on one does not touch
the other), and `task_model` adapts such a copy, giving every parameter that trains (norms, the
head, a fine-pruned weight) its own storage so that training never writes into the base.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from spa.adapters.config import AdapterConfig
from spa.adapters.inject import adapt


def shared_copy(model: nn.Module, *, frozen_only: bool = False) -> nn.Module:
    """A structural copy of `model` whose parameters alias the original's storage.

    Modules, buffers and plain attributes are copied as `copy.deepcopy` would; each parameter
    becomes a new `nn.Parameter` over the same data (`data_ptr` is equal), tied parameters stay
    tied. Writing into a shared parameter of one model in place writes into the other: use it
    for models whose shared parameters are not trained, or train through `task_model`.

    Args:
        model: any module.
        frozen_only: share only parameters that do not require a gradient; trainable ones
            (adapter factors, trained norms: small) are copied, so the copy stays what it was
            when the original trains on.

    Returns:
        The copy.
    """
    memo: dict[int, object] = {}
    for parameter in model.parameters():  # each tied parameter once
        if frozen_only and parameter.requires_grad:
            continue
        alias = nn.Parameter(parameter.data, requires_grad=parameter.requires_grad)
        memo[id(parameter)] = alias
    return copy.deepcopy(model, memo)


def task_model(base: nn.Module, config: AdapterConfig) -> nn.Module:
    """`spa.adapt` applied to a copy of `base` that shares its frozen weights (no base copy).

    The frozen tensors of the returned model are the base's own storage; parameters that the
    config leaves trainable outside the adapters (norms, the head, biases, the weight of a
    fine-pruned layer) get a copy of their own, so an optimizer step never changes `base`.
    `base` itself is not modified: pass it as `base_model` to `save_task` and `TaskHost`.

    Args:
        base: the plain base model.
        config: an adapter config (`SPLoRAConfig`, `SPLoPAConfig`, `FinePruningConfig`, ...).

    Returns:
        The adapted task model (with `spa_report`, as `spa.adapt` leaves it).

    Raises:
        ConfigError, NoTargetsError, UnsupportedLayerError: as `spa.adapt`.
    """
    storages = {parameter.data_ptr() for parameter in base.parameters()}
    model = adapt(shared_copy(base), config)
    owned: dict[int, nn.Parameter] = {}  # shared trainable parameter -> its own copy
    for module in model.modules():
        for name, parameter in module._parameters.items():
            if parameter is None or not parameter.requires_grad:
                continue
            if parameter.data_ptr() not in storages and id(parameter) not in owned:
                continue
            if id(parameter) not in owned:
                copied = parameter.detach().clone(memory_format=torch.contiguous_format)
                owned[id(parameter)] = nn.Parameter(copied)
            module._parameters[name] = owned[id(parameter)]  # tied owners get the same copy
    return model
