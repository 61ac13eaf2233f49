"""Compatibility names: the adapter protocols now live in `spa.adapters.protocols`."""

from spa.adapters.protocols import AdapterLayer, adapter_layers, is_adapted

__all__ = ["AdapterLayer", "adapter_layers", "is_adapted"]
