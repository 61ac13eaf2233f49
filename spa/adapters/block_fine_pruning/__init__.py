"""Block fine-pruning: config, layer and its `ADAPTER_KINDS` registration."""

from __future__ import annotations

from torch import nn

from spa.adapters.block_fine_pruning.config import BlockFinePruningConfig
from spa.adapters.block_fine_pruning.layer import BlockMaskedLinear
from spa.adapters.config import ModuleSelection
from spa.adapters.inject import adapt
from spa.adapters.protocols import block_prunable_layers
from spa.adapters.registry import AdapterKind, register_kind
from spa.adapters.splopa.config import check_block_shape_field


def _make_layer(module: nn.Module, config: BlockFinePruningConfig, name: str, context: dict):
    return BlockMaskedLinear(module, config.block_shape, name)


def _layer_options(layer: BlockMaskedLinear) -> dict:
    return {"block_shape": list(layer.block_shape)}


def _from_bundle(base: nn.Module, options: dict, name: str) -> BlockMaskedLinear:
    rows, cols = check_block_shape_field(options["block_shape"])
    return BlockMaskedLinear(base, (rows, cols), name)


# Bundles use the generic codec: the trained weight, the block mask and the bias if changed.
BLOCK_FINE_PRUNING = register_kind(
    AdapterKind(
        name="block_fine_pruning",
        config_type=BlockFinePruningConfig,
        pruning="block",
        label="Fine-pruning",
        layer_types=(nn.Linear,),
        make_layer=_make_layer,
        layer_options=_layer_options,
        from_bundle=_from_bundle,
    )
)


def wrap_block_fine_pruning(
    model: nn.Module,
    block_shape: tuple[int, int] = (32, 32),
    *,
    target_modules: ModuleSelection = None,
    exclude_modules: ModuleSelection = None,
    head_modules: ModuleSelection = None,
) -> nn.Module:
    """`spa.adapt(model, BlockFinePruningConfig(...))`, kept for existing callers.

    Args:
        model: the model to prune (modified in place).
        block_shape: `(p, q)` of every wrapped layer.
        target_modules: as in `BlockFinePruningConfig`.
        exclude_modules: as in `BlockFinePruningConfig`.
        head_modules: as in `BlockFinePruningConfig`.

    Returns:
        `model`, adapted.
    """
    config = BlockFinePruningConfig(
        block_shape=tuple(block_shape),
        target_modules=target_modules,
        exclude_modules=exclude_modules,
        head_modules=head_modules,
    )
    return adapt(model, config)


__all__ = [
    "BLOCK_FINE_PRUNING",
    "BlockFinePruningConfig",
    "BlockMaskedLinear",
    "block_prunable_layers",
    "wrap_block_fine_pruning",
]
