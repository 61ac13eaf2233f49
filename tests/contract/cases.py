"""The contract table: one `KindCase` per registered adapter kind, with test-side formulas.

Every case gives a tiny config, the base layer types it supports, an independent dense `W_t`
(the paper's equation written out with `torch.kron` / explicit products, not spa's code) and
the DESIGN §2 dParams formula. A new kind adds its case next to its registration.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import spa

CHANNEL_LAYERS = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv2d-grouped",
    "conv2d-depthwise",
)


@dataclass(frozen=True)
class KindCase:
    """What the contract table needs to know about one adapter kind.

    Attributes:
        config: a small config of the kind.
        layer_types: names of the nets in `nets.NETS` whose layers the kind adapts.
        reference_weight: the layer's `W_t` computed independently from its tensors.
        dparams: the layer's learned parameters by the DESIGN §2 formula.
    """

    config: Callable[[], object]
    layer_types: tuple[str, ...]
    reference_weight: Callable[[nn.Module], torch.Tensor]
    dparams: Callable[[nn.Module], int]


CASES: dict[str, KindCase] = {}


def _channel_mask(layer: nn.Module) -> torch.Tensor:
    weight = layer.base.weight
    mask = layer.out_mask[:, None].float() * layer.in_mask[None, :].float()  # (out, in)
    return mask.reshape(mask.shape + (1,) * (weight.dim() - 2))


def _splora_reference(layer: nn.Module) -> torch.Tensor:
    weight = layer.base.weight * _channel_mask(layer)
    if layer.rank == 0:
        return weight
    down = layer.down * layer.out_mask.float()[:, None]
    up = layer.up * layer.in_mask.float()[None, :]
    product = down @ up  # (out, in/groups)
    centre = tuple(k // 2 for k in weight.shape[2:])
    weight = weight.clone()
    weight[(slice(None), slice(None)) + centre] += product
    return weight


def _kron_mask(layer: nn.Module) -> torch.Tensor:
    return torch.kron(layer.block_mask.float(), torch.ones(layer.block_shape))


def _splopa_reference(layer: nn.Module) -> torch.Tensor:
    weight = layer.base.weight * _kron_mask(layer)
    bank = layer.prototypes
    for i in range(bank.num_prototypes):
        prototype = bank.row_factors[i] @ bank.col_factors[i].T  # (p, q)
        weight = weight + torch.kron(layer.block_weights[i] * layer.block_mask, prototype)
    return weight


def _rows_cols(layer: nn.Module) -> tuple[int, int]:
    return int(layer.out_mask.sum()), int(layer.in_mask.sum())


def _fine_pruning_dparams(layer: nn.Module) -> int:
    rows, cols = _rows_cols(layer)
    kernel = math.prod(layer.base.weight.shape[2:])
    return rows * cols * kernel + (rows if layer.base.bias is not None else 0)


def _splopa_dparams(layer: nn.Module) -> int:
    bank = layer.prototypes
    kept = int(layer.block_mask.sum())
    p, q = layer.block_shape
    return bank.num_prototypes * kept + bank.num_prototypes * bank.prototype_rank * (p + q)


def _block_fine_pruning_dparams(layer: nn.Module) -> int:
    p, q = layer.block_shape
    return p * q * int(layer.block_mask.sum()) + layer.base.bias.numel()


CASES["splora"] = KindCase(
    config=lambda: spa.SPLoRAConfig(rank=2),
    layer_types=CHANNEL_LAYERS,
    reference_weight=_splora_reference,
    dparams=lambda layer: layer.rank * sum(_rows_cols(layer)),
)
CASES["fine_pruning"] = KindCase(
    config=lambda: spa.FinePruningConfig(),
    layer_types=CHANNEL_LAYERS,
    reference_weight=_splora_reference,
    dparams=_fine_pruning_dparams,
)
CASES["splopa"] = KindCase(
    config=lambda: spa.SPLoPAConfig(block_shape=(2, 2), num_prototypes=3, prototype_rank=1),
    layer_types=("linear",),
    reference_weight=_splopa_reference,
    dparams=_splopa_dparams,
)
CASES["block_fine_pruning"] = KindCase(
    config=lambda: spa.BlockFinePruningConfig(block_shape=(2, 2)),
    layer_types=("linear",),
    reference_weight=lambda layer: layer.base.weight * _kron_mask(layer),
    dparams=_block_fine_pruning_dparams,
)
