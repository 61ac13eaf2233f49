"""Norms over the last axis: computed over kept channels while masked, sliced when compacted.

A LayerNorm or RMSNorm averages over all its channels, so zeroing a removed channel would still
count it in the mean: the masked norm must normalise the kept channels only, exactly as the
compacted (smaller) norm does. `normalise_kept` does that for `nn.LayerNorm`, `nn.RMSNorm` and
any other norm class over the last axis whose tensors are per-channel vectors (LlamaRMSNorm,
T5LayerNorm, ...): the module's own `forward` runs on the kept channels with its per-channel
tensors narrowed. `slice_norm` removes channels of such a norm, and of every LayerNorm, in
ascending order (Torch-Pruning 1.6's LayerNorm pruner does not keep them in order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spa.adapters.modules import (
    NORM_TYPES,
    is_norm,
    is_weightless_norm,
    narrow_tensor,
    norm_channels,
)


def is_last_axis_norm(module: nn.Module) -> bool:
    """True for a norm over the last axis that is not one of torch's channel-first norms.

    `nn.LayerNorm` counts only in its plain channels-last form (see `layer_norm_dim`); any other
    class `is_norm` accepts that is not a batch, instance or group norm counts (RMSNorm
    variants).
    """
    if isinstance(module, nn.LayerNorm):
        return getattr(module, "data_format", "channels_last") == "channels_last"
    return (is_norm(module) and not isinstance(module, NORM_TYPES)) or is_weightless_norm(module)


def _vectors(module: nn.Module, size: int) -> dict[str, torch.Tensor]:
    """The module's own parameters and buffers that are per-channel vectors of `size`."""
    tensors = {**module._buffers, **module._parameters}
    return {
        name: tensor
        for name, tensor in tensors.items()
        if tensor is not None and tensor.dim() == 1 and tensor.shape[0] == size
    }


def _plain_formula(module: nn.Module) -> bool:
    """True for a LayerNorm / RMSNorm computing torch's formula: the class itself, or a subclass
    whose forward changes only the layout (ConvNeXt's `data_format`; callers pass channels
    last). Another subclass may compute otherwise (Nemotron's `LayerNorm1P` scales by 1 + w)."""
    if not isinstance(module, nn.LayerNorm | nn.RMSNorm):
        return False
    plain = type(module).forward in (nn.LayerNorm.forward, nn.RMSNorm.forward)
    return plain or hasattr(module, "data_format")


def normalise_kept(module: nn.Module, x: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """The norm of `x` (channels last) restricted to the `kept` channel indices.

    Args:
        module: a last-axis norm (`is_last_axis_norm`).
        x: its input, channels on the last axis.
        kept: indices of the kept channels.

    Returns:
        What the compacted norm computes on `x[..., kept]` (a tensor of `len(kept)` channels).
    """
    size, count = x.shape[-1], kept.numel()
    x = x.index_select(-1, kept)
    if _plain_formula(module):
        weight, bias = (getattr(module, name, None) for name in ("weight", "bias"))
        weight = None if weight is None else weight.index_select(0, kept)
        if isinstance(module, nn.RMSNorm):
            return F.rms_norm(x, (count,), weight, module.eps)
        bias = None if bias is None else bias.index_select(0, kept)
        return F.layer_norm(x, (count,), weight, bias, module.eps)
    # Any other class: its own forward, bypassing hooks, with its vectors (and a LayerNorm
    # subclass's normalized_shape, e.g. Nemotron's `LayerNorm1P`) narrowed.
    originals = _vectors(module, size)
    shape = getattr(module, "normalized_shape", None)
    try:
        for name, tensor in originals.items():
            table = module._parameters if name in module._parameters else module._buffers
            table[name] = tensor.index_select(0, kept)
        if isinstance(shape, tuple):
            module.normalized_shape = (count,)
        return module.forward(x)
    finally:
        if isinstance(shape, tuple):
            module.normalized_shape = shape
        for name, tensor in originals.items():
            table = module._parameters if name in module._parameters else module._buffers
            table[name] = tensor


def slice_norm(module: nn.Module, removed: list[int]) -> None:
    """Remove channels of a norm's last normalised axis in place: its tensors and its size.

    Used for every LayerNorm (channels last or first) and every other last-axis norm
    (RMSNorm variants, which Torch-Pruning has no pruning function for). Kept channels stay in
    ascending order: Torch-Pruning 1.6's `LayernormPruner` keeps them in the iteration order of
    a Python set (its `keep_idxs.sort()` is not in place), which is not ascending once the kept
    indices spread past the set's table size, so it permuted the weight against its inputs
    (Swin's patch-merge norm, 16 of 64 channels kept: masked != compacted by 1e-2).

    Args:
        module: the norm.
        removed: channel indices to remove.
    """
    shape = getattr(module, "normalized_shape", None)
    shape = tuple(shape) if isinstance(shape, tuple | list) else None
    size = shape[-1] if shape else norm_channels(module)
    kept = torch.tensor(sorted(set(range(size)) - set(removed)), dtype=torch.long)
    tensors = {**module._buffers, **module._parameters}
    for name, tensor in tensors.items():
        # Per-channel vectors, and a LayerNorm's weight/bias shaped like normalized_shape.
        if tensor is not None and (
            (tensor.dim() == 1 and tensor.shape[0] == size) or tuple(tensor.shape) == shape
        ):
            narrow_tensor(module, name, kept, tensor.dim() - 1)
    if shape:
        module.normalized_shape = (*shape[:-1], kept.numel())


def bare_norm_weight(owner: nn.Module, reshaped: bool) -> tuple[nn.Module, str, str | None]:
    """How a traced group takes a norm seen only as its bare weight (a norm class
    Torch-Pruning does not know): `(module, role, problem)`.

    A last-axis norm (its weight used as it is, not reshaped to broadcast over a channel-first
    axis) becomes a "norm" member, masked over its kept channels; any other norm's statistics
    mix channels in a way spa cannot mask to match the compacted model (a norm over [C, H, W]),
    so its weight stays a "param" member with a problem that leaves the group out.
    """
    if is_last_axis_norm(owner) and not reshaped:
        return owner, "norm", None
    problem = (
        f"the weight of {type(owner).__name__}, a norm whose statistics mix channels (masked "
        "and compacted outputs would differ)"
    )
    return owner, "param", problem
