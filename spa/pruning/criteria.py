"""Channel criteria (Weight, Gradient, Taylor, LRP, activation-aware) and `score`.

A criterion maps the producer layers of the groups (the Linear/Conv/SPLoRA layers whose output
channels carry the group channels) to raw per-output-channel statistics, accumulated over
batches; a criterion marked with `reads_inputs` maps the consumer layers (role "in": the
layers whose input channels carry them) to per-input-channel statistics instead. `score` then
applies `reduce_fn` (the place for a distributed all-reduce), normalises every layer's vector
to unit L2 norm and gives each group channel the mean over its scored members.
Adapter layers are always scored through their adapted (fused, masked) weight and output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from spa._registry import Registry
from spa.errors import ConfigError
from spa.pruning import activation as _activation
from spa.pruning._layers import batches, channels_per_sample, effective_weight
from spa.pruning.backward import averaged, backward_statistics, blockwise_taylor
from spa.pruning.calibration import sequential_blocks
from spa.pruning.groups import ChannelGroup
from spa.pruning.lrp import lrp

Statistics = dict[str, torch.Tensor]
CRITERIA: Registry = Registry("criterion")


def reads_inputs(function: Callable) -> Callable:
    """Mark a criterion as scoring its layers' input channels (group members of role "in")."""
    function.channel_role = "in"
    return function


def per_block(function: Callable) -> Callable:
    """Mark a criterion as computable from one block's layers and their inputs alone (no loss
    at the model's output), so `spa.tasks.streaming` can score a model block by block; it then
    passes the layers' input `moments` (`spa.pruning.activation.Moments`) as an option."""
    function.per_block = True
    return function


@CRITERIA.register("weight")
@per_block
def weight_norm(
    model: nn.Module, layers: Mapping[str, nn.Module], data=None, loss_fn=None, **options
) -> Statistics:
    """L_p norm of each output channel's (adapted) weights; `p` from option `norm_p`, default 2.

    Args:
        model: the adapted model (unused: weights only).
        layers: producer layers by path.
        data: unused.
        loss_fn: unused.
        **options: `norm_p` (default 2.0).

    Returns:
        Per layer path, one value per output channel.
    """
    p = float(options.get("norm_p", 2.0))
    return {
        name: effective_weight(layer).flatten(1).norm(p=p, dim=1) for name, layer in layers.items()
    }


@CRITERIA.register("gradient")
def gradient_magnitude(
    model: nn.Module, layers: Mapping[str, nn.Module], data=None, loss_fn=None, **options
) -> Statistics:
    """Per output channel, `sum |dL/dW_t|` over its adapted weights, averaged over batches.

    Args:
        model: the adapted model.
        layers: producer layers by path.
        data: iterable of `(inputs, targets)` batches (or dicts with a "labels" entry).
        loss_fn: `loss_fn(output_fn(outputs), targets)`; default cross-entropy over the last
            axis (per-token outputs included).
        **options: `num_batches` (None = all of `data`), `output_fn` (default: the tensor,
            `.logits` or first element of the model's output).

    Returns:
        Per layer path, one value per output channel.
    """
    return backward_statistics(
        model,
        layers,
        data,
        loss_fn,
        options.get("num_batches"),
        "gradient",
        options.get("output_fn"),
    )


@CRITERIA.register("taylor")
def taylor(
    model: nn.Module, layers: Mapping[str, nn.Module], data=None, loss_fn=None, **options
) -> Statistics:
    """First-order Taylor estimate of the loss change from removing a channel (Molchanov 2017).

    Per sample and output channel, `|mean over positions (a * dL/da)|` of the layer output `a`,
    averaged over all samples; `score` L2-normalises it per layer. On a model whose transformer
    blocks run one after another the backward pass goes block by block
    (`spa.pruning.taylor_blocks`), so memory holds one block's graph, not the whole model's.

    Args:
        model: the adapted model.
        layers: producer layers by path.
        data: iterable of `(inputs, targets)` batches (or dicts with a "labels" entry).
        loss_fn: `loss_fn(output_fn(outputs), targets)`; default cross-entropy over the last
            axis (per-token outputs included).
        **options: `num_batches` (None = all of `data`), `output_fn` (default: the tensor,
            `.logits` or first element of the model's output), `blockwise` (None = where
            possible, True = insist, False = one backward pass over the whole model).

    Returns:
        Per layer path, one value per output channel.

    Raises:
        ConfigError: without data, or `blockwise=True` on a model without sequential blocks.
    """
    num_batches, output_fn = options.get("num_batches"), options.get("output_fn")
    blockwise = options.get("blockwise")
    blocks = sequential_blocks(model) if blockwise is not False else None
    if blockwise and blocks is None:
        raise ConfigError(
            "taylor: blockwise=True needs a model of a described family whose blocks run one "
            "after another"
        )
    if blocks is None or data is None:
        return backward_statistics(model, layers, data, loss_fn, num_batches, "taylor", output_fn)
    totals, samples = blockwise_taylor(model, layers, blocks, data, loss_fn, num_batches, output_fn)
    return averaged(totals, samples, "taylor")


@CRITERIA.register("lrp")
def lrp_relevance(
    model: nn.Module, layers: Mapping[str, nn.Module], data=None, loss_fn=None, **options
) -> Statistics:
    """Relevance of each output channel (sum over positions), averaged over samples.

    Args:
        model: the adapted model.
        layers: producer layers by path.
        data: iterable of `(inputs, targets)` batches; targets choose the explained logit
            (per token for per-token outputs; -100 is ignored).
        loss_fn: unused.
        **options: `num_batches`, `lrp_rule` ("epsilon" or "zplus"), `lrp_epsilon` (1e-6),
            `output_fn` (as for the gradient criteria).

    Returns:
        Per layer path, one value per output channel.
    """
    if data is None:
        raise ConfigError("criterion 'lrp' needs data: pass data=[(inputs, targets), ...]")
    totals: Statistics = {}
    samples = 0
    for inputs, targets in batches(data, options.get("num_batches")):
        result = lrp(
            model,
            inputs,
            targets,
            rule=options.get("lrp_rule", "epsilon"),
            epsilon=options.get("lrp_epsilon", 1e-6),
            output_fn=options.get("output_fn"),
        )
        for name, layer in layers.items():
            per_channel = channels_per_sample(result.layers[name], layer).sum(dim=(0, 2))
            totals[name] = totals.get(name, 0) + per_channel
        samples += result.output.numel()
    return {name: value / max(samples, 1) for name, value in totals.items()}


@CRITERIA.register("activation")
@reads_inputs
@per_block
def activation(
    model: nn.Module, layers: Mapping[str, nn.Module], data=None, loss_fn=None, **options
) -> Statistics:
    """Wanda-sp: per input channel `j`, `||W[:, j]||_1 * sqrt(mean over tokens of X_j^2)`.

    Forward passes only (no gradient, no copy of a weight); on a model whose transformer blocks
    run in sequence the inputs are collected block by block (`spa.pruning.activation`).

    Args:
        model: the adapted model.
        layers: consumer layers by path (their input channels carry the group channels).
        data: calibration batches (inputs, or `(inputs, targets)` pairs; targets unused).
        loss_fn: unused.
        **options: `num_batches` (None = all of `data`), `blockwise` (None = where possible,
            True = insist, False = whole-model passes), `moments` (inputs already collected,
            per layer path: then `data` is not read).

    Returns:
        Per layer path, one value per input channel.
    """
    moments = options.get("moments") or _activation.collect(
        model, layers, data, options.get("num_batches"), options.get("blockwise")
    )
    return _activation.activation_statistics(moments, layers)


@CRITERIA.register("fluctuation")
@reads_inputs
@per_block
def fluctuation(
    model: nn.Module, layers: Mapping[str, nn.Module], data=None, loss_fn=None, **options
) -> Statistics:
    """FLAP's fluctuation: per input channel `j`, `||W[:, j]||_2^2 * var over tokens of X_j`.

    Args:
        model: the adapted model.
        layers: consumer layers by path.
        data: calibration batches (targets unused).
        loss_fn: unused.
        **options: as for "activation".

    Returns:
        Per layer path, one value per input channel.
    """
    moments = options.get("moments") or _activation.collect(
        model, layers, data, options.get("num_batches"), options.get("blockwise")
    )
    return _activation.fluctuation_statistics(moments, layers)


def normalise(statistics: Statistics) -> Statistics:
    """Divide each layer's vector by its L2 norm (zero vectors stay zero).

    Args:
        statistics: per layer, one value per output channel.

    Returns:
        The normalised statistics.
    """
    return {name: value / value.norm().clamp_min(1e-12) for name, value in statistics.items()}


def score(
    model: nn.Module,
    criterion: str,
    groups: Sequence[ChannelGroup],
    data: Iterable | None = None,
    loss_fn: Callable | None = None,
    num_batches: int | None = 1,
    reduce_fn: Callable[[Statistics], Statistics] | None = None,
    output_fn: Callable | None = None,
    **options,
) -> dict[int, torch.Tensor]:
    """Score every group channel with a registered criterion (higher = more important).

    The model runs in eval mode (so BatchNorm statistics are not updated) and is restored; no
    parameter gradient is written.

    Args:
        model: the adapted model the groups were built for.
        criterion: a name in `CRITERIA` (the registered channel criteria).
        groups: from `channel_groups`.
        data: iterable of `(inputs, targets)` batches, or dicts of keyword inputs with a
            "labels" entry (not needed for "weight"); inputs may be a tensor, tuple or dict.
        loss_fn: `loss_fn(output_fn(outputs), targets)` for gradient-based criteria; default
            cross-entropy over the last axis (per-token outputs `(N, T, C)` with targets
            `(N, T)`; -100 ignored).
        num_batches: batches of `data` to accumulate over (None = all).
        reduce_fn: applied to the accumulated per-layer statistics before normalisation, e.g.
            an all-reduce across data-parallel ranks; default identity.
        output_fn: maps the model's output to the prediction tensor the loss and LRP read;
            default: the tensor itself, a `ModelOutput`'s / dict's `logits`, or a tuple's first
            element. Pass one for anything else (e.g. QA start/end logits).
        **options: criterion options (`norm_p`, `lrp_rule`, `lrp_epsilon`, `blockwise`).

    Returns:
        Per group index, a float tensor with one score per group channel.

    Raises:
        ConfigError: for an unknown criterion or missing data.
    """
    function = CRITERIA.get(criterion)
    role = getattr(function, "channel_role", "out")  # producers, or consumers (`reads_inputs`)
    scored = {m.name for g in groups for m in g.members if m.role == role}
    layers = {name: model.get_submodule(name) for name in sorted(scored)}
    training = model.training
    model.eval()
    try:
        statistics = function(
            model,
            layers,
            data=data,
            loss_fn=loss_fn,
            num_batches=num_batches,
            output_fn=output_fn,
            **options,
        )
    finally:
        model.train(training)
    if reduce_fn is not None:
        statistics = reduce_fn(statistics)
    return aggregate(groups, statistics, role)


def aggregate(
    groups: Sequence[ChannelGroup], statistics: Statistics, role: str = "out"
) -> dict[int, torch.Tensor]:
    """Normalise each layer's statistics to unit L2 norm and give every group channel the mean
    over its members of `role` ("out": producers, "in": consumers).

    Args:
        groups: the channel groups.
        statistics: per layer path, one value per output (or input) channel.
        role: which members the statistics belong to (a criterion's `channel_role`).

    Returns:
        Per group index, a float tensor with one score per group channel.
    """
    statistics = normalise({n: v.double() for n, v in statistics.items()})
    result = {}
    for index, group in enumerate(groups):
        total = torch.zeros(group.size, dtype=torch.float64)
        count = torch.zeros(group.size, dtype=torch.float64)
        for member in (m for m in group.members if m.role == role):
            values = statistics.get(member.name)
            if values is None:
                continue
            channels = torch.tensor(member.channels, dtype=torch.long)
            positions = torch.tensor(member.positions, dtype=torch.long)
            total.index_add_(0, channels, values.cpu()[positions])
            count.index_add_(0, channels, torch.ones(len(channels), dtype=torch.float64))
        result[index] = (total / count.clamp_min(1)).float()
    return result
