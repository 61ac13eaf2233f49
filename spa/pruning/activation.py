"""Activation-aware input-channel statistics (Wanda-sp, FLAP) and how they are collected.

Both criteria score the *input* channels of a layer (its weight columns), the side of a group
its consumers hold: an attention head is the output projection's columns of that head, an FFN
neuron the down projection's column. For input channel `j` of a layer with weight `W` and
inputs `X` (every token or position of every calibration batch):

- "activation" (Wanda-sp, An et al. 2024 / Sun et al. 2023): `||W[:, j]||_1 * ||X_j||_rms`,
  where `||X_j||_rms = sqrt(mean over tokens of X_j^2)`;
- "fluctuation" (FLAP, An et al. 2024): `||W[:, j]||_2^2 * var over tokens of X_j`.

The inputs are read by forward pre-hooks that accumulate, per channel, the count, sum and sum
of squares in float64 (never the activations themselves). On a model whose transformer blocks
run one after another and hold every scored layer, they are collected block by block
(`spa.pruning.calibration`): memory holds one block's activations, and the numbers equal a
whole-model pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from spa._batch import call_model
from spa.adapters._conv import groups_of
from spa.adapters.transposed import linear_view
from spa.errors import ConfigError
from spa.pruning._layers import batches, effective_weight
from spa.pruning.calibration import capture_inputs, inside, run_block, sequential_blocks


@dataclass
class Moments:
    """Per input channel: tokens seen, sum and sum of squares of the inputs (float64)."""

    count: int = 0
    total: torch.Tensor | None = None
    squares: torch.Tensor | None = None
    handles: list = field(default_factory=list)

    def add(self, inputs: torch.Tensor, conv: bool) -> None:
        """Accumulate one batch of inputs `(N, ..., C)` (Linear) or `(N, C, ...)` (conv)."""
        x = inputs.detach()
        x = (x.movedim(1, -1) if conv else x).reshape(-1, x.shape[1 if conv else -1]).double()
        total, squares = x.sum(dim=0), x.square().sum(dim=0)
        self.total = total if self.total is None else self.total + total
        self.squares = squares if self.squares is None else self.squares + squares
        self.count += x.shape[0]

    def mean_square(self) -> torch.Tensor:
        """`mean X_j^2` per channel."""
        return self.squares / max(self.count, 1)

    def variance(self) -> torch.Tensor:
        """Population variance of `X_j` per channel."""
        mean = self.total / max(self.count, 1)
        return (self.mean_square() - mean.square()).clamp_min(0)


def _is_conv(layer: nn.Module) -> bool:
    return isinstance(getattr(layer, "base", layer), nn.modules.conv._ConvNd)


def watch(layers: Mapping[str, nn.Module]) -> dict[str, Moments]:
    """Attach a pre-hook to each layer that accumulates its input moments; `release` detaches.

    Args:
        layers: layers by path.

    Returns:
        Per path, the `Moments` its hook fills.
    """
    moments = {}
    for name, layer in layers.items():
        found = moments[name] = Moments()
        conv = _is_conv(layer)

        def hook(module, args, found=found, conv=conv):
            found.add(args[0], conv)

        found.handles.append(layer.register_forward_pre_hook(hook))
    return moments


def release(moments: Mapping[str, Moments]) -> None:
    """Remove the hooks `watch` attached."""
    for found in moments.values():
        for handle in found.handles:
            handle.remove()
        found.handles.clear()


def collect(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    data: Iterable | None,
    num_batches: int | None,
    blockwise: bool | None = None,
) -> dict[str, Moments]:
    """Input moments of every layer over the calibration batches, block by block if possible.

    Args:
        model: the model (in eval mode).
        layers: the layers to watch, by path.
        data: calibration batches, as for `spa.pruning.score`.
        num_batches: batches to use (None = all).
        blockwise: True insists on block-by-block collection, False runs the whole model per
            batch, None (default) goes block by block where the model allows it.

    Returns:
        Per layer path, its input moments.

    Raises:
        ConfigError: without data, or `blockwise=True` on a model that does not allow it.
    """
    if data is None:
        raise ConfigError("activation criteria need calibration data: pass data=[inputs, ...]")
    blocks = sequential_blocks(model) if blockwise is not False else None
    if blocks is not None and any(inside(name, blocks) is None for name in layers):
        blocks = None  # a scored layer outside the blocks (an LM head) needs the whole model
    if blockwise and blocks is None:
        raise ConfigError(
            "blockwise=True needs a model of a described family whose blocks run one after "
            "another and hold every scored layer"
        )
    if blocks is None or not layers:
        return _whole_model(model, layers, data, num_batches)
    last = max(inside(name, blocks) for name in layers)  # later blocks need not run
    modules = [model.get_submodule(path) for path in blocks[: last + 1]]
    calls = capture_inputs(model, modules[0], data, num_batches)
    moments = {}
    for index, block in enumerate(modules):
        found = watch({n: layer for n, layer in layers.items() if inside(n, blocks) == index})
        try:
            calls = run_block(block, calls)
        finally:
            release(found)
        moments.update(found)
    return moments


def _whole_model(model, layers, data, num_batches) -> dict[str, Moments]:
    moments = watch(layers)
    try:
        with torch.no_grad():
            for inputs, _ in batches(data, num_batches):
                call_model(model, inputs)
    finally:
        release(moments)
    return moments


def column_norms(layer: nn.Module, power: int, rows: int = 256) -> torch.Tensor:
    """`sum over rows (and kernel taps) of |W[:, j]|^power` for every input channel `j`.

    Accumulated in float64 over chunks of `rows` output rows, so no float64 copy of the whole
    weight is made (for an 8B model's FFN projection that copy alone would be 0.5 GB).

    Args:
        layer: a Linear, Conv (grouped too), `transformers` Conv1D or adapter layer (its
            adapted weight).
        power: 1 (L1 norm) or 2 (squared L2 norm).
        rows: output rows per chunk.

    Returns:
        One value per input channel, float64.
    """
    weight = effective_weight(linear_view(layer))
    groups = groups_of(getattr(layer, "base", layer))
    out, per_group = weight.shape[0], weight.shape[1]
    grouped = weight.reshape(groups, out // groups, per_group, -1)  # (g, out/g, in/g, taps)
    total = torch.zeros(groups, per_group, dtype=torch.float64, device=weight.device)
    for chunk in grouped.split(rows, dim=1):
        total += chunk.double().abs().pow(power).sum(dim=(1, 3))
    return total.reshape(-1)


def activation_statistics(moments: Mapping[str, Moments], layers) -> dict[str, torch.Tensor]:
    """Wanda-sp: `||W[:, j]||_1 * sqrt(mean X_j^2)` per input channel of every layer."""
    return {
        name: column_norms(layers[name], 1) * found.mean_square().sqrt().to(torch.float64)
        for name, found in moments.items()
    }


def fluctuation_statistics(moments: Mapping[str, Moments], layers) -> dict[str, torch.Tensor]:
    """FLAP: `||W[:, j]||_2^2 * var X_j` per input channel of every layer."""
    return {
        name: column_norms(layers[name], 2) * found.variance() for name, found in moments.items()
    }
