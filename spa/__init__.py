"""spa: Structured Pruning Adapters.

Turn one frozen pretrained network into many pruned task models, each stored as a tiny set of
task parameters: `adapt` a model, prune and train it, `fuse` it into an ordinary PyTorch model,
and count what a task learned with `count_learned_parameters`.
"""

from spa.accounting import LearnedParameters, count_learned_parameters, learned_parameters
from spa.adapters import (
    AdaptReport,
    FinePruningConfig,
    PrototypeBank,
    SPLoPAConfig,
    SPLoPALinear,
    SPLoRAConfig,
    SPLoRALayer,
    adapt,
    adapter_layers,
)
from spa.export import fuse

__version__ = "0.1.0"

__all__ = [
    "AdaptReport",
    "FinePruningConfig",
    "LearnedParameters",
    "PrototypeBank",
    "SPLoPAConfig",
    "SPLoPALinear",
    "SPLoRAConfig",
    "SPLoRALayer",
    "__version__",
    "adapt",
    "adapter_layers",
    "count_learned_parameters",
    "fuse",
    "learned_parameters",
]
