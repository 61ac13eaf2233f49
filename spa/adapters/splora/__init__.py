"""SPLoRA (DESIGN §2, Eq. 4): config, layer, equation and its `ADAPTER_KINDS` registration."""

from __future__ import annotations

from torch import nn

from spa.adapters._conv import SUPPORTED_LAYERS
from spa.adapters.rank_bounds import capped_rank
from spa.adapters.registry import AdapterKind, register_kind
from spa.adapters.splora.codec import SPLORA_CODEC
from spa.adapters.splora.config import SPLoRAConfig
from spa.adapters.splora.equation import splora_weight
from spa.adapters.splora.layer import SPLoRALayer


def _layer_rank(module: nn.Module, config: SPLoRAConfig) -> int:
    """The rank `config` asks of `module`, before the width cap."""
    if config.rank_fraction is not None:
        return max(1, round(config.rank_fraction * module.weight.shape[0]))
    return config.rank


def _make_layer(module: nn.Module, config: SPLoRAConfig, name: str, context: dict) -> SPLoRALayer:
    rank = _layer_rank(module, config)
    rank = capped_rank(module, rank) if config.cap_rank else rank
    return SPLoRALayer(module, rank=rank, init_range=config.init_range, name=name)


SPLORA = register_kind(
    AdapterKind(
        name="splora",
        config_type=SPLoRAConfig,
        pruning="channel",
        label="SPLoRA r{rank}",
        layer_types=SUPPORTED_LAYERS,
        make_layer=_make_layer,
        codec=SPLORA_CODEC,
        layer_rank=_layer_rank,
    )
)

__all__ = ["SPLORA", "SPLoRAConfig", "SPLoRALayer", "splora_weight"]
