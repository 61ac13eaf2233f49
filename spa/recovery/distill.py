"""Distillation from the unpruned model: KL on logits at a temperature, optional hidden states.

The recovery loss is `(1 - weight) * task + weight * T^2 * KL(teacher_T || student_T)
+ hidden_weight * mean_l MSE(h_l^student, h_l^teacher)`, where `_T` is a softmax at temperature
`T` over the last axis (every token of a language model counts as one row), as in Hinton et al.
and nn_pruning / APT's recovery; the `T^2` keeps the gradient scale independent of `T`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from spa._batch import call_model
from spa.errors import ConfigError
from spa.recovery.teacher import Teacher, _unwrapped


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """How strongly the pruned student follows the teacher (weights 0 = no distillation).

    Args:
        weight: share of the logit KL in the loss, in [0, 1]; the task loss gets `1 - weight`.
        temperature: softmax temperature of both models' logits (> 0).
        hidden_weight: weight of the hidden-state MSE (>= 0); needs `hidden_modules`.
        hidden_modules: dotted module paths whose outputs are matched (e.g. the blocks).
    """

    weight: float = 0.0
    temperature: float = 2.0
    hidden_weight: float = 0.0
    hidden_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (0.0 <= self.weight <= 1.0):
            raise ConfigError(f"distill.weight must be in [0, 1], got {self.weight!r}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigError(f"distill.temperature must be > 0, got {self.temperature!r}")
        if not (self.hidden_weight >= 0 and math.isfinite(self.hidden_weight)):
            raise ConfigError(f"distill.hidden_weight must be >= 0, got {self.hidden_weight!r}")
        if self.hidden_weight > 0 and not self.hidden_modules:
            raise ConfigError(
                "distill.hidden_weight > 0 needs distill.hidden_modules (module paths to match)"
            )

    @property
    def is_active(self) -> bool:
        """Whether the teacher takes part in the loss at all."""
        return self.weight > 0 or self.hidden_weight > 0


def kl_to_teacher(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """`T^2 KL(softmax(t/T) || softmax(s/T))`, averaged over all rows of the last axis.

    Args:
        student_logits: `(..., classes)`.
        teacher_logits: the same shape.
        temperature: `T`.

    Returns:
        A scalar.
    """
    classes = student_logits.shape[-1]
    student = functional.log_softmax(student_logits.reshape(-1, classes) / temperature, dim=-1)
    teacher = functional.log_softmax(
        teacher_logits.reshape(-1, classes).to(student.dtype) / temperature, dim=-1
    )
    kl = functional.kl_div(student, teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


def logits_of(output: Any) -> torch.Tensor:
    """A model output's logits: `.logits`, a dict's "logits", a tuple's first element, or itself."""
    if isinstance(output, dict) and "logits" in output:
        return output["logits"]
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, tuple | list):
        return output[0]
    return output


def _first_tensor(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output


class Distiller:
    """Adds the distillation terms to a training loss; records hidden states with hooks.

    Not safe to share between threads.

    Args:
        config: the weights and temperature.
        teacher: the `Teacher` (e.g. `Teacher(model)` before pruning).
        model: the student, for the hidden-state hooks (needed when `hidden_weight > 0`).
        output_fn: reads the logits from a model output.
    """

    def __init__(
        self,
        config: DistillConfig,
        teacher: Teacher,
        model: nn.Module | None = None,
        output_fn: Callable[[Any], torch.Tensor] = logits_of,
    ) -> None:
        self.config, self.teacher, self.output_fn = config, teacher, output_fn
        self._hidden: dict[str, torch.Tensor] = {}
        self._handles: list = []
        self._in_teacher = False
        if config.hidden_weight > 0:
            if model is None:
                raise ConfigError("Distiller: hidden-state matching needs the student `model`")
            module = _unwrapped(model)
            for name in config.hidden_modules:
                try:
                    target = module.get_submodule(name)
                except AttributeError:
                    raise ConfigError(f"distill.hidden_modules: no module {name!r}") from None
                self._handles.append(target.register_forward_hook(self._recorder(name)))

    def _recorder(self, name: str):
        def record(module: nn.Module, args: tuple, output: Any) -> None:
            self._hidden[name] = _first_tensor(output)

        return record

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def loss(
        self,
        model: nn.Module,
        inputs: Any,
        output: Any,
        task_loss: torch.Tensor,
        call: Callable = call_model,
    ) -> torch.Tensor:
        """The recovery loss for a batch the student (`model`) has just been run on.

        Args:
            model: the student.
            inputs: the batch the student saw (any form `call` accepts).
            output: the student's output on it (or its logits).
            task_loss: the task loss on it.
            call: `call(module, inputs)` runs a module on the batch.

        Returns:
            `task_loss` itself when distillation is off, else the combined loss.
        """
        config = self.config
        if not config.is_active or self._in_teacher:
            return task_loss
        student_hidden = dict(self._hidden)
        self._in_teacher = True
        try:
            teacher_output = self.teacher(model, inputs, call)
        finally:
            self._in_teacher = False
        teacher_hidden = dict(self._hidden)
        total = (1.0 - config.weight) * task_loss
        if config.weight > 0:
            student_logits = self.output_fn(output)
            teacher_logits = self.output_fn(teacher_output)
            total = total + config.weight * kl_to_teacher(
                student_logits, teacher_logits, config.temperature
            )
        if config.hidden_weight > 0:
            terms = [
                functional.mse_loss(student_hidden[name], teacher_hidden[name].detach())
                for name in config.hidden_modules
            ]
            total = total + config.hidden_weight * torch.stack(terms).mean()
        return total

    def install_loss_hook(self, model: nn.Module) -> None:
        """Make `model`'s training forward return the recovery loss as `output.loss`.

        For loops that read the loss from the model's output (`transformers.Trainer`): in
        training mode with gradients, a forward hook runs the teacher on the same keyword
        arguments (without `labels`) and replaces `loss`.
        """

        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            if not (module.training and torch.is_grad_enabled()) or self._in_teacher:
                return output
            if isinstance(output, dict) and output.get("loss") is not None:
                task, logits = output["loss"], output["logits"]
            elif isinstance(output, tuple) and len(output) > 1 and "labels" in kwargs:
                task, logits = output[0], output[1]  # (loss, logits, ...) as HF returns
            else:
                return output
            batch = {key: value for key, value in kwargs.items() if key != "labels"}
            loss = self.loss(module, (args, batch), logits, task, call=_call_args_kwargs)
            if isinstance(output, tuple):
                return (loss, *output[1:])
            output["loss"] = loss
            return output

        self._handles.append(model.register_forward_hook(hook, with_kwargs=True))


def _call_args_kwargs(module: nn.Module, inputs: tuple[tuple, dict]) -> Any:
    args, kwargs = inputs
    return module(*args, **kwargs)
