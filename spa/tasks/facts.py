"""What a bundle records about a task model and its base, computed by the modules that own it.

`task_facts` gathers, in one call, what `spa.save_task` writes but does not compute: the base's
architecture name and fingerprints (`spa.tasks.fingerprint`), the density
(`spa.adapters.density`), the learned parameters (`spa.accounting`), the adapter description
`spa.adapt` left on the model, and the modules whose trained values the declared method
changes (`spa.tasks.schema.needed_modules`, the rule a loader checks bundles against). A caller
that already has them passes them to `save_task(..., facts=)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from spa.accounting import LearnedParameters, learned_parameters
from spa.adapters.density import layers_density
from spa.adapters.inject import adapt_report
from spa.adapters.protocols import adapter_layers
from spa.tasks.expert_view import split_view
from spa.tasks.fingerprint import describe_architecture, fingerprint, structure_fingerprint
from spa.tasks.schema import needed_modules, trained_groups


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskFacts:
    """What other modules computed about a task model and its base, for a bundle's metadata.

    Attributes:
        architecture: `describe_architecture(base)`.
        base_fingerprint: `fingerprint(base)` (its weights).
        base_structure: `structure_fingerprint(base)` (its module tree and shapes).
        density: `layers_density` of the adapter layers.
        learned: `learned_parameters(model)` (dParams, DESIGN §2).
        adapter: the adapter config and task head `spa.adapt` recorded (None if not adapted).
        trained_modules: paths of the base modules, adapter layers aside, whose values the
            declared method trains (a bundle records each, changed or not).
    """

    architecture: str
    base_fingerprint: str
    base_structure: str
    density: float
    learned: LearnedParameters
    adapter: dict[str, Any] | None
    trained_modules: tuple[str, ...]


def adapter_description(model: nn.Module) -> dict[str, Any] | None:
    """The adapter config and task head `spa.adapt` recorded on `model` (None if not adapted)."""
    report = adapt_report(model)
    if report is None:
        return None
    config = dataclasses.asdict(report.config)
    return {"type": type(report.config).__name__, "config": config, "head": list(report.head)}


def task_facts(model: nn.Module, base_model: nn.Module) -> TaskFacts:
    """The facts a bundle of task `model` over `base_model` records (see `TaskFacts`).

    Args:
        model: the compacted task model.
        base_model: the plain base model it was adapted from (3-D experts are seen split, as
            `spa.adapt` splits them, so the fingerprints are those a loader computes).
    """
    base = split_view(base_model)
    layers = dict(adapter_layers(model))
    adapter = adapter_description(model)
    groups, head = trained_groups({"adapter": adapter})
    return TaskFacts(
        architecture=describe_architecture(base),
        base_fingerprint=fingerprint(base),
        base_structure=structure_fingerprint(base),
        density=layers_density(layers.values()),
        learned=learned_parameters(model),
        adapter=adapter,
        trained_modules=tuple(needed_modules(base, groups, head, layers)),
    )
