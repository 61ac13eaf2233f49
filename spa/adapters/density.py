"""The one definition of density (DESIGN §2): retained prunable base weights / base weights."""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import nn

from spa.adapters.protocols import adapter_layers
from spa.errors import ConfigError


def layers_density(layers: Iterable[nn.Module]) -> float:
    """Retained base-weight entries of `layers` over the weights of their original base layers.

    Every adapter kind says what it retains (`AdapterLayer.retained_weights`: kept rows x kept
    columns x kernel for channel masks, kept blocks x p x q for block masks); the denominator is
    the original base weight count, so the value is the same before and after compaction.

    Args:
        layers: adapter layers.

    Returns:
        The density in [0, 1]; 1.0 for no layers.
    """
    retained = base = 0
    for layer in layers:
        retained += layer.retained_weights()
        base += math.prod(layer.base_shape)
    return retained / base if base else 1.0


def density(model: nn.Module) -> float:
    """Retained fraction of the prunable layers' base weights (the paper's density).

    Used by logs, warnings, tables, bundle metadata and reports alike.

    Args:
        model: a model adapted with any adapter kind (masked and/or compacted).

    Returns:
        The density in (0, 1].

    Raises:
        ConfigError: if the model has no adapter layer.
    """
    layers = [layer for _, layer in adapter_layers(model)]
    if not layers:
        raise ConfigError(
            "density: the model has no adapter layer; adapt it with spa.adapt(model, "
            "SPLoRAConfig()), FinePruningConfig(), SPLoPAConfig() or BlockFinePruningConfig()"
        )
    return layers_density(layers)


def trained_base_counts(layer: nn.Module, bias_entries: int | None = None) -> dict[str, int]:
    """The base terms of `AdapterLayer.learned_parameter_counts`: the retained weights when the
    base weight trains ("fine-pruned") and the bias when it trains ("bias").

    Args:
        layer: an adapter layer with `base` and `retained_weights()`.
        bias_entries: bias values it keeps (SPLoRA: the kept rows); None counts the whole bias.
    """
    counts: dict[str, int] = {}
    if layer.base.weight.requires_grad:
        counts["fine-pruned"] = layer.retained_weights()
    bias = layer.base.bias
    if bias is not None and bias.requires_grad:
        counts["bias"] = bias.numel() if bias_entries is None else bias_entries
    return counts
