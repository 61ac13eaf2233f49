"""Adapter layers, their configs and `adapt`."""

from spa.adapters.base import AdapterLayer, adapter_layers, is_adapted
from spa.adapters.block_fine_pruning import (
    BlockMaskedLinear,
    block_prunable_layers,
    wrap_block_fine_pruning,
)
from spa.adapters.config import FinePruningConfig, SPLoPAConfig, SPLoRAConfig
from spa.adapters.inject import AdaptReport, adapt
from spa.adapters.splopa import PrototypeBank, SPLoPALinear
from spa.adapters.splora import SPLoRALayer

__all__ = [
    "AdaptReport",
    "AdapterLayer",
    "BlockMaskedLinear",
    "FinePruningConfig",
    "PrototypeBank",
    "SPLoPAConfig",
    "SPLoPALinear",
    "SPLoRAConfig",
    "SPLoRALayer",
    "adapt",
    "adapter_layers",
    "block_prunable_layers",
    "is_adapted",
    "wrap_block_fine_pruning",
]
