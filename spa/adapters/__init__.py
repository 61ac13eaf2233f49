"""Adapter kinds, their configs and `adapt`.

Each kind lives in its own package (config, layer, equation) and registers itself once in
`ADAPTER_KINDS`; importing this package registers the built-in kinds.
"""

from spa.adapters.block_fine_pruning import (
    BlockFinePruningConfig,
    BlockMaskedLinear,
    wrap_block_fine_pruning,
)
from spa.adapters.density import density, layers_density
from spa.adapters.fine_pruning import FinePruningConfig
from spa.adapters.inject import AdaptReport, adapt, adapt_report, set_trainable, task_head
from spa.adapters.modules import NORM_TYPES, find_head, matches, replace_module
from spa.adapters.protocols import (
    BLOCK_MASK,
    IN_MASK,
    OUT_MASK,
    AdapterLayer,
    BlockMasked,
    ChannelMasked,
    adapter_layers,
    block_prunable_layers,
    channel_layers,
    is_adapted,
)
from spa.adapters.registry import ADAPTER_KINDS, AdapterKind, kind_for_config, register_kind
from spa.adapters.sharing import shared_copy, task_model
from spa.adapters.splopa import PrototypeBank, SPLoPAConfig, SPLoPALinear
from spa.adapters.splora import SPLoRAConfig, SPLoRALayer
from spa.adapters.weight_cache import cache_fused_weights

__all__ = [
    "ADAPTER_KINDS",
    "BLOCK_MASK",
    "IN_MASK",
    "NORM_TYPES",
    "OUT_MASK",
    "AdaptReport",
    "AdapterKind",
    "AdapterLayer",
    "BlockFinePruningConfig",
    "BlockMasked",
    "BlockMaskedLinear",
    "ChannelMasked",
    "FinePruningConfig",
    "PrototypeBank",
    "SPLoPAConfig",
    "SPLoPALinear",
    "SPLoRAConfig",
    "SPLoRALayer",
    "adapt",
    "adapt_report",
    "adapter_layers",
    "block_prunable_layers",
    "cache_fused_weights",
    "channel_layers",
    "density",
    "find_head",
    "is_adapted",
    "kind_for_config",
    "layers_density",
    "matches",
    "register_kind",
    "replace_module",
    "set_trainable",
    "shared_copy",
    "task_head",
    "task_model",
    "wrap_block_fine_pruning",
]
