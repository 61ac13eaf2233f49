"""Helpers the channel criteria share: a layer's adapted weight, re-running it, batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from spa.adapters import _conv
from spa.adapters.protocols import AdapterLayer
from spa.pruning.module_masks import module_mask


def effective_weight(layer: nn.Module) -> torch.Tensor:
    """The weight the layer computes with: the fused (adapted, masked) one for adapters."""
    if isinstance(layer, AdapterLayer):
        with torch.no_grad():
            return layer.fused_weight().detach()
    return layer.weight.detach()


def effective_bias(layer: nn.Module) -> torch.Tensor | None:
    """The bias the layer adds (the adapter's fused bias), detached."""
    bias = layer.fused_bias() if isinstance(layer, AdapterLayer) else layer.bias
    return None if bias is None else bias.detach()


def run_layer(
    layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Apply `layer`'s own operation (linear / conv with its stride, padding...) with `weight`.

    A hook mask on the output of a plain layer (see `spa.pruning.module_masks`) is applied too.
    """
    out = _conv.layer_forward(_base(layer), x, weight, bias)
    mask = module_mask(layer, "out")
    if mask is not None and not isinstance(layer, AdapterLayer):
        out = out * per_channel(mask.to(out.dtype), out, layer)
    return out


def per_channel(vector: torch.Tensor, like: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """Reshape a per-channel vector to broadcast over `layer`'s output `like`."""
    if isinstance(_base(layer), nn.Linear):
        return vector
    return vector.reshape((-1,) + (1,) * (like.dim() - 2))


def channels_per_sample(tensor: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """`(N, C, positions)` view of a layer output (channels last for Linear, dim 1 for convs)."""
    if isinstance(_base(layer), nn.Linear):
        tensor = tensor.movedim(-1, 1)
    return tensor.reshape(tensor.shape[0], tensor.shape[1], -1)


def _base(layer: nn.Module) -> nn.Module:
    return layer.base if isinstance(layer, AdapterLayer) else layer


def batches(data: Iterable, num_batches: int | None) -> Iterator[tuple]:
    """Yield `(inputs, targets)` from `data`, at most `num_batches` of them (None = all)."""
    for index, batch in enumerate(data):
        if num_batches is not None and index >= num_batches:
            return
        if isinstance(batch, tuple | list) and len(batch) == 2:
            yield batch[0], batch[1]
        else:
            yield batch, None
