"""spa: Structured Pruning Adapters.

Turn one frozen pretrained network into many pruned task models, each stored as a tiny set of
task parameters: `adapt` a model, prune and train it, deploy it (`spa.deploy`: `fuse` into an
ordinary PyTorch model, `compact` / `compact_blocks`, `optimize_for_inference`), and count what a
task learned with `count_learned_parameters`.
"""

from spa._version import __version__
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
from spa.deploy import compact, compact_blocks, compacted, fuse, optimize_for_inference
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
    "count_flops",
    "count_learned_parameters",
    "count_macs",
    "density",
    "fuse",
    "learned_parameters",
    "load_task",
    "optimize_for_inference",
    "plan",
    "read_bundle",
    "save_pretrained",
    "save_task",
    "shared_copy",
    "task_model",
]
