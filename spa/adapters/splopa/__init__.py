"""SPLoPA (DESIGN §2, Eq. 6): config, layer, equation and its `ADAPTER_KINDS` registration."""

from __future__ import annotations

from torch import nn

from spa.adapters.registry import AdapterKind, register_kind
from spa.adapters.splopa.codec import SPLOPA_CODEC
from spa.adapters.splopa.config import SPLoPAConfig
from spa.adapters.splopa.equation import splopa_weight
from spa.adapters.splopa.layer import PrototypeBank, SPLoPALinear, check_block_shape


def _make_layer(module: nn.Module, config: SPLoPAConfig, name: str, context: dict):
    bank = None
    if config.shared_prototypes:
        banks = context.setdefault("prototype_banks", {})
        key = config.block_shape
        if key not in banks:
            weight = module.weight
            banks[key] = PrototypeBank(
                config.block_shape,
                config.num_prototypes,
                config.prototype_rank,
                device=weight.device,
                dtype=weight.dtype,
            )
        bank = banks[key]
    return SPLoPALinear(
        module,
        block_shape=config.block_shape,
        num_prototypes=config.num_prototypes,
        prototype_rank=config.prototype_rank,
        init_range=config.init_range,
        bank=bank,
        name=name,
    )


SPLOPA = register_kind(
    AdapterKind(
        name="splopa",
        config_type=SPLoPAConfig,
        pruning="block",
        label="SPLoPA R{num_prototypes} {block_shape[0]}x{block_shape[1]}",
        layer_types=(nn.Linear,),
        make_layer=_make_layer,
        codec=SPLOPA_CODEC,
    )
)

__all__ = [
    "SPLOPA",
    "PrototypeBank",
    "SPLoPAConfig",
    "SPLoPALinear",
    "check_block_shape",
    "splopa_weight",
]
