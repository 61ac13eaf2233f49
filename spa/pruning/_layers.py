"""Helpers the channel criteria share: a layer's adapted weight, re-running it, batches, and
reading the prediction out of a model's output."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spa.adapters import _conv
from spa.adapters.protocols import AdapterLayer
from spa.errors import ConfigError
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
    """Yield `(inputs, targets)` from `data`, at most `num_batches` of them (None = all).

    A batch is an `(inputs, targets)` pair, a dict of keyword inputs whose "labels" entry (if
    any) holds the targets (the `transformers` convention), or bare inputs (targets None).
    """
    for index, batch in enumerate(data):
        if num_batches is not None and index >= num_batches:
            return
        if isinstance(batch, tuple | list) and len(batch) == 2:
            yield batch[0], batch[1]
        elif isinstance(batch, Mapping) and "labels" in batch:
            yield {k: v for k, v in batch.items() if k != "labels"}, batch["labels"]
        else:
            yield batch, None


def model_output(output: Any) -> torch.Tensor:
    """The prediction tensor of a model's output; the default `output_fn` of the criteria.

    A tensor is returned as it is, a `transformers` `ModelOutput` or a dict gives its "logits",
    a tuple or list its first element.

    Raises:
        ConfigError: if the output is none of these; pass `output_fn=` to say where it is.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(getattr(output, "logits", None), torch.Tensor):
        return output.logits
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ConfigError(
        f"cannot find the prediction in a model output of type {type(output).__name__} (no "
        "tensor, 'logits' or first element); pass output_fn=lambda output: ... to score()"
    )


def default_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the last axis; per-token outputs `(N, T, C)` take targets `(N, T)`.

    Targets equal to -100 are ignored (the `transformers` convention for padding).
    """
    if outputs.dim() > 2:
        return F.cross_entropy(outputs.flatten(0, -2), targets.flatten(), ignore_index=-100)
    return F.cross_entropy(outputs, targets, ignore_index=-100)
