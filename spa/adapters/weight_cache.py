"""`cache_fused_weights`: the memory-versus-speed switch of adapter layers (issue 22 item 2)."""

from __future__ import annotations

from torch import nn

from spa.adapters.protocols import adapter_layers


def cache_fused_weights(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Let every adapter layer of `model` keep one fused weight for inference, or none.

    With `enabled` (the default of every layer) an adapter layer keeps at most one full-size
    derived weight, its fused `W_t`, so inference runs one plain op per layer at the cost of one
    weight copy per adapted layer. Disabled, no layer keeps one: SPLoRA runs the base layer on
    the masked input plus the rank-r adapter path, SPLoPA forms `W_t` for each forward and
    drops it; use it for models near the memory limit (billion-parameter models on CPU).
    Training never keeps a derived weight either way. Caches already filled are dropped when
    disabling. Not safe to call while another thread runs the model.

    Args:
        model: an adapted model.
        enabled: keep one fused weight per layer (faster) or none (smaller).

    Returns:
        `model`.
    """
    for _, layer in adapter_layers(model):
        setter = getattr(layer, "set_weight_cache", None)  # kinds that keep no derived weight
        if setter is not None:  # (block fine-pruning) have no such switch
            setter(enabled)
    return model
