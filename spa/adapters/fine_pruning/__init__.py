"""Channel fine-pruning: the rank-0 form of `SPLoRALayer` (masks only, the weight trains)."""

from __future__ import annotations

from torch import nn

from spa.adapters._conv import SUPPORTED_LAYERS
from spa.adapters.fine_pruning.config import FinePruningConfig
from spa.adapters.registry import AdapterKind, register_kind
from spa.adapters.splora.codec import SPLORA_CODEC
from spa.adapters.splora.layer import SPLoRALayer


def _make_layer(module: nn.Module, config: FinePruningConfig, name: str, context: dict):
    return SPLoRALayer(module, rank=0, name=name)


FINE_PRUNING = register_kind(
    AdapterKind(
        name="fine_pruning",
        config_type=FinePruningConfig,
        pruning="channel",
        label="Fine-pruning",
        layer_types=SUPPORTED_LAYERS,
        make_layer=_make_layer,
        codec=SPLORA_CODEC,
    )
)

__all__ = ["FINE_PRUNING", "FinePruningConfig"]
