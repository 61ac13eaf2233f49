"""Adapter layers, their configs and `adapt`."""

from spa.adapters.base import AdapterLayer, adapter_layers, is_adapted
from spa.adapters.config import FinePruningConfig, SPLoPAConfig, SPLoRAConfig
from spa.adapters.inject import AdaptReport, adapt
from spa.adapters.splopa import PrototypeBank, SPLoPALinear
from spa.adapters.splora import SPLoRALayer

__all__ = [
    "AdaptReport",
    "AdapterLayer",
    "FinePruningConfig",
    "PrototypeBank",
    "SPLoPAConfig",
    "SPLoPALinear",
    "SPLoRAConfig",
    "SPLoRALayer",
    "adapt",
    "adapter_layers",
    "is_adapted",
]
