"""The unpruned adapted model as a teacher, without a second copy of the shared base weights.

A `Teacher` snapshots what the task changes: every trainable parameter (adapter factors, norms,
head; for fine-pruning every trained weight, which is the task's own) and every buffer (masks,
normalisation statistics). It runs the *same* module with those tensors substituted through
`torch.func.functional_call`, so every frozen tensor (the base weights) is the student's own
storage. Boolean buffers that pruning added after the snapshot (the hook masks of
`spa.pruning.module_masks`) read as all-True: nothing was removed when the teacher was taken.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from spa._batch import call_model
from spa.errors import ConfigError


def _unwrapped(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # a DDP wrapper holds the model as `module`


class Teacher:
    """A frozen view of a model: its own module, or a snapshot of an adapted model's task tensors.

    Not safe to share between threads that train the same model (the forward flips eval mode).

    Args:
        model: the teacher. With `snapshot=True` (the default) the current task tensors of this
            (adapted, unpruned) model are cloned and the student is expected to be the same
            module later; with `snapshot=False` the model itself is the teacher (any model,
            e.g. a larger one), run as it is.
        snapshot: see `model`.
    """

    def __init__(self, model: nn.Module, *, snapshot: bool = True) -> None:
        module = _unwrapped(model)
        self.module = module if not snapshot else None
        self.state: dict[str, torch.Tensor] = {}
        if snapshot:
            with torch.no_grad():
                for name, parameter in module.named_parameters():
                    if parameter.requires_grad:
                        self.state[name] = parameter.detach().clone()
                for name, buffer in module.named_buffers():
                    self.state[name] = buffer.detach().clone()

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> Teacher:
        """A snapshot teacher from its saved `state` (e.g. a checkpoint's)."""
        teacher = cls.__new__(cls)
        teacher.module, teacher.state = None, dict(state)
        return teacher

    def stored_elements(self) -> int:
        """Elements the teacher holds of its own (0 for a given model)."""
        return sum(tensor.numel() for tensor in self.state.values())

    def _substitutes(self, module: nn.Module) -> dict[str, torch.Tensor]:
        current = {**dict(module.named_parameters()), **dict(module.named_buffers())}
        tensors = dict(self.state)
        for name, tensor in current.items():
            if name not in tensors and tensor.dtype == torch.bool:
                tensors[name] = torch.ones_like(tensor)  # a mask pruning added later
        for name, tensor in tensors.items():
            if name not in current or current[name].shape != tensor.shape:
                raise ConfigError(
                    f"distillation teacher: {name} has changed since the teacher was taken (the "
                    "model was compacted?); pass the teacher as a separate model "
                    "(Teacher(model, snapshot=False)) or distil before compacting"
                )
        return tensors

    @torch.no_grad()
    def __call__(self, student: nn.Module, inputs: Any, call: Callable = call_model) -> Any:
        """Run the teacher on `inputs` in eval mode without gradients.

        Args:
            student: the model being trained (the snapshot's module, possibly DDP-wrapped).
            inputs: the batch, in any form `call` accepts.
            call: `call(module, inputs)` runs a module on the batch.

        Returns:
            The teacher's output.
        """
        if self.module is not None:
            return _in_eval(self.module, lambda: call(self.module, inputs))
        module = _unwrapped(student)
        substituted = _Substituted(module, self._substitutes(module))
        return _in_eval(module, lambda: call(substituted, inputs))


class _Substituted(nn.Module):
    """Runs `module` with some of its tensors replaced (`functional_call`), so a batch-calling
    helper can treat the teacher like any module; `module` is not registered as a child."""

    def __init__(self, module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.__dict__["_target"] = module  # not a submodule: nothing is copied or moved
        self._tensors = tensors

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self._target, self._tensors, args, kwargs, strict=False)


def _in_eval(module: nn.Module, run: Callable[[], Any]) -> Any:
    training = module.training
    module.eval()
    try:
        return run()
    finally:
        module.train(training)
