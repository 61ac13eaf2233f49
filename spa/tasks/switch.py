"""`SwitchPlan`: a validated task compiled once, so `TaskHost` can rebuild its model quickly.

`plan_task` + `build_task` validate and build a task in one go. A host rebuilds the same task
every time it comes back into its cache, so `compile_switch` does the per-task work once, when
the task is added: attribute values converted, norm and head tensors prepared, kept channels
as index tensors and adapter factors in the base's dtype. `SwitchPlan.build` then copies the
base's module tree and writes each changed tensor straight into new memory (channel layers by
`ChannelGather`), with no per-entry decoding or checks. It builds exactly the model
`build_task` builds from the same plan (same values, bit for bit), never modifies the base,
and gives every model its own new tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from spa.adapters.transposed import is_transposed_linear
from spa.codec.records import _MODULE_TABLES, converted_attributes, set_tensor
from spa.tasks.load import TaskPlan, build_task, module_tensors
from spa.tasks.scratch import Scratch


@dataclass
class _Change:
    """What a task changes on one module of the base."""

    attributes: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, tuple[str, torch.Tensor | None]] = field(default_factory=dict)
    # builds the layer's (weight, bias): a ChannelGather's build, or its layer plan's build
    layer: Callable[[Scratch], tuple[torch.Tensor, torch.Tensor | None]] | None = None


class SwitchPlan:
    """A task compiled against its base model for repeated, fast builds.

    Args:
        base_model: the plain base model the plan was validated against.
        plan: from `plan_task`.

    Attributes:
        base_model: the base model.
        gathered: number of layers built by a precomputed gather (the rest use their plan).
    """

    def __init__(self, base_model: nn.Module, plan: TaskPlan) -> None:
        self.base_model = base_model
        modules = dict(base_model.named_modules())
        # A transformers Conv1D layer is replaced by a Linear: such tasks use build_task.
        transposed = any(is_transposed_linear(modules[p.entry["path"]]) for p in plan.layers)
        # So do tasks whose modules read counts from a config (built with their own copy).
        self._plan = plan if transposed or plan.config_family is not None else None
        self._modules = list({id(m): m for m in base_model.modules()}.values())
        self._plain_eval = all(type(m).train is nn.Module.train for m in self._modules)
        self._changes: list[tuple[int, _Change]] = []
        self.gathered = 0
        if self._plan is not None:
            return
        with torch.no_grad():
            for layer_plan in plan.layers:
                module = modules[layer_plan.entry["path"]]
                attributes = converted_attributes(module, layer_plan.entry.get("attributes", {}))
                change = _Change(attributes, {}, _layer_builder(layer_plan))
                self.gathered += not isinstance(change.layer, _PlannedLayer)
                self._changes.append((id(module), change))
            narrowed: dict[tuple, torch.Tensor] = {}  # one tensor per narrowed base tensor
            for entry, tensors in plan.modules:
                module = modules[entry["path"]]
                attributes = converted_attributes(module, entry.get("attributes", {}))
                change = _Change(attributes, module_tensors(module, entry, tensors, narrowed))
                self._changes.append((id(module), change))

    def build(
        self, scratch: Scratch, finalize: Callable[[nn.Module], nn.Module] | None = None
    ) -> nn.Module:
        """The task model, as `build_task(base_model, plan, finalize)` builds it.

        Args:
            scratch: work buffers reused across builds (never part of the model).
            finalize: applied to the built model, as in `build_task`.

        Returns:
            The task model in eval mode, sharing every unchanged tensor with the base.
        """
        if self._plan is not None:
            return build_task(self.base_model, self._plan, finalize=finalize)
        evaluate = finalize is None and self._plain_eval
        copies = self._copy_tree(evaluate)
        clones: dict[int, torch.Tensor] = {}  # a tensor two modules share is cloned once
        with torch.no_grad():
            for module_id, change in self._changes:
                module = copies[module_id]
                if change.layer is not None:
                    weight, bias = change.layer(scratch)
                    set_tensor(module, "weight", "parameter", weight)
                    set_tensor(module, "bias", "parameter", bias)
                # Size attributes are plain instance values (checked by plan_task).
                module.__dict__.update(change.attributes)
                for key, (kind, tensor) in change.tensors.items():
                    if tensor is not None and id(tensor) not in clones:
                        clones[id(tensor)] = tensor.clone()
                    set_tensor(module, key, kind, None if tensor is None else clones[id(tensor)])
        model = copies[id(self.base_model)]
        if evaluate:
            return model
        if finalize is not None:
            model = finalize(model)
        return model.eval()

    def _copy_tree(self, evaluate: bool) -> dict[int, nn.Module]:
        """New module objects for the base's tree, keyed by the id of the base module they copy.

        As `structural_copy`: every module has its own parameter, buffer, sub-module and hook
        tables and shares every tensor; with `evaluate` each is set to eval mode directly
        (what `eval()` does when no module overrides `train`).
        """
        copies = {}
        for module in self._modules:
            new = object.__new__(type(module))
            state = new.__dict__
            state.update(module.__dict__)
            for table in _MODULE_TABLES:
                value = state.get(table)
                if value is not None:
                    state[table] = value.copy()
            if evaluate:
                state["training"] = False
            copies[id(module)] = new
        for module in self._modules:
            copies[id(module)]._modules = {
                name: None if child is None else copies[id(child)]
                for name, child in module._modules.items()
            }
        return copies


@dataclass(frozen=True)
class _PlannedLayer:
    """A layer without a precomputed gather: built by its plan (masked, block, generic)."""

    plan: Any

    def __call__(self, scratch: Scratch) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.plan.build()


def _layer_builder(layer_plan: Any) -> Callable[[Scratch], tuple]:
    """The layer's precomputed gather (plans with a `gather()` that returns one), else its plan."""
    gather = getattr(layer_plan, "gather", None)
    producer = None if gather is None else gather()
    return _PlannedLayer(layer_plan) if producer is None else producer.build


def compile_switch(base_model: nn.Module, plan: TaskPlan) -> SwitchPlan:
    """Compile a validated plan for repeated builds; see `SwitchPlan`."""
    return SwitchPlan(base_model, plan)
