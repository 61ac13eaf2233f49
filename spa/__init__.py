"""spa: Structured Pruning Adapters.

Turn one frozen pretrained network into many pruned task models, each stored as a tiny set of
task parameters: `adapt` a model, prune and train it, deploy it (`spa.deploy`: `fuse` into an
ordinary PyTorch model, `compact` / `compact_blocks`, `optimize_for_inference`), and count what a
task learned with `count_learned_parameters`.

The public names are imported on first use (PEP 562), so `import spa` and the `spa` command
line start without importing torch: `spa --help` and argument errors answer at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from spa._version import __version__

# Public name -> the module that defines it (imported on first access).
_LAZY = {
    **dict.fromkeys(
        ("LearnedParameters", "count_learned_parameters", "learned_parameters"), "spa.accounting"
    ),
    **dict.fromkeys(
        (
            "ADAPTER_KINDS",
            "AdaptReport",
            "BlockFinePruningConfig",
            "FinePruningConfig",
            "PrototypeBank",
            "SPLoPAConfig",
            "SPLoPALinear",
            "SPLoRAConfig",
            "SPLoRALayer",
            "adapt",
            "adapter_layers",
            "cache_fused_weights",
            "shared_copy",
            "task_model",
        ),
        "spa.adapters",
    ),
    **dict.fromkeys(("Plan", "plan"), "spa.pruning.plan"),
    **dict.fromkeys(
        (
            "compact",
            "compact_blocks",
            "compacted",
            "compacted_for_save",
            "fuse",
            "optimize_for_inference",
        ),
        "spa.deploy",
    ),
    **dict.fromkeys(("count_flops", "count_macs", "density"), "spa.flops"),
    "pretrained_round_to": "spa.families",
    **dict.fromkeys(
        ("TaskHost", "TaskReport", "load_task", "read_bundle", "save_pretrained", "save_task"),
        "spa.tasks",
    ),
}

if TYPE_CHECKING:
    from spa.accounting import LearnedParameters, count_learned_parameters, learned_parameters
    from spa.adapters import (
        ADAPTER_KINDS,
        AdaptReport,
        BlockFinePruningConfig,
        FinePruningConfig,
        PrototypeBank,
        SPLoPAConfig,
        SPLoPALinear,
        SPLoRAConfig,
        SPLoRALayer,
        adapt,
        adapter_layers,
        cache_fused_weights,
        shared_copy,
        task_model,
    )
    from spa.deploy import (
        compact,
        compact_blocks,
        compacted,
        compacted_for_save,
        fuse,
        optimize_for_inference,
    )
    from spa.families import pretrained_round_to
    from spa.flops import count_flops, count_macs, density
    from spa.pruning.plan import Plan, plan
    from spa.tasks import (
        TaskHost,
        TaskReport,
        load_task,
        read_bundle,
        save_pretrained,
        save_task,
    )


def __getattr__(name: str) -> Any:
    """Import a public name's module, or a subpackage, on first access (`spa.adapt`)."""
    module = _LAZY.get(name)
    if module is None:  # a subpackage (`spa.tasks`, `spa.deploy`, ...), as an eager import gave
        try:
            return importlib.import_module(f"spa.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"spa.{name}":
                raise
            raise AttributeError(f"module 'spa' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ADAPTER_KINDS",
    "AdaptReport",
    "BlockFinePruningConfig",
    "FinePruningConfig",
    "LearnedParameters",
    "Plan",
    "PrototypeBank",
    "SPLoPAConfig",
    "SPLoPALinear",
    "SPLoRAConfig",
    "SPLoRALayer",
    "TaskHost",
    "TaskReport",
    "__version__",
    "adapt",
    "adapter_layers",
    "cache_fused_weights",
    "compact",
    "compact_blocks",
    "compacted",
    "compacted_for_save",
    "count_flops",
    "count_learned_parameters",
    "count_macs",
    "density",
    "fuse",
    "learned_parameters",
    "load_task",
    "optimize_for_inference",
    "plan",
    "pretrained_round_to",
    "read_bundle",
    "save_pretrained",
    "save_task",
    "shared_copy",
    "task_model",
]
