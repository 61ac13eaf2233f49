"""Dimension-free helpers shared by every adapter over `nn.Linear` and `nn.Conv1d/2d/3d`.

A Linear layer is treated as a convolution with zero spatial dimensions: its weight is
`(out, in)`, a conv weight is `(out, in/groups, *kernel)`. Every helper reads the dimension from
the weight, never from the class name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spa.errors import UnsupportedLayerError

SUPPORTED_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
SUPPORTED_LAYERS = (nn.Linear, *SUPPORTED_CONVS)
_POINTWISE_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


# Public hyper-parameters of the wrapped layer that host-model code reads from the module it
# holds (e.g. MobileNetV2's TF padding reads `conv.stride`); adapter layers pass them through.
BASE_ATTRIBUTES = frozenset(
    {
        "in_features",
        "out_features",
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
        "padding_mode",
    }
)


# Tensors host-model code reads from the layer it holds, as the adapted layer computes them:
# `nn.MultiheadAttention` runs its `out_proj` through `F.multi_head_attention_forward` with
# `out_proj.weight` and `out_proj.bias` (SigLIP's pooling head). Keyed by attribute name; each
# entry reads the adapter layer's own protocol (`AdapterLayer.fused_weight` / `fused_bias`).
STAND_INS = {
    "weight": lambda layer: layer.fused_weight(),
    "bias": lambda layer: layer.fused_bias(),
}


def base_attribute(layer: nn.Module, name: str) -> object:
    """`nn.Module.__getattr__` for an adapter layer that stands in for the layer it wraps.

    Adapter layers use it as their `__getattr__`, so wrapping a layer never changes how the host
    model's own code runs (issue 11): `STAND_INS` (`weight`, `bias`) are the adapted layer's
    fused weight and masked bias, `BASE_ATTRIBUTES` come from the current `base`, so they
    follow compaction.

    Raises:
        AttributeError: for any other missing attribute, as `nn.Module` would.
    """
    try:
        return nn.Module.__getattr__(layer, name)
    except AttributeError:
        if name in STAND_INS:
            return STAND_INS[name](layer)
        if name not in BASE_ATTRIBUTES:
            raise
        return getattr(nn.Module.__getattr__(layer, "base"), name)


def check_supported(base: nn.Module, name: str) -> None:
    """Raise unless `base` is a Linear or a Conv1d/2d/3d (subclasses included).

    ConvTranspose subclasses `_ConvNd` but stores its weight as (in, out/groups, ...), so it is
    rejected by name rather than silently accepted. Subclasses of the supported types (e.g.
    EfficientNet's depth-wise conv) are accepted: fusing and compaction rebuild them as the plain
    torch type they derive from (see `rebuild_layer`).

    Raises:
        UnsupportedLayerError: naming the layer path and the supported types.
    """
    if isinstance(base, nn.modules.conv._ConvTransposeNd):
        raise UnsupportedLayerError(
            f"{name}: {type(base).__name__} is not supported (its weight is stored transposed); "
            "exclude it via `exclude_modules=`"
        )
    if not isinstance(base, SUPPORTED_LAYERS):
        supported = ", ".join(t.__name__ for t in SUPPORTED_LAYERS)
        raise UnsupportedLayerError(
            f"{name}: {type(base).__name__} is not supported; supported types: {supported}"
        )
    method = overridden_method(base)
    if method is not None:
        raise UnsupportedLayerError(
            f"{name}: {type(base).__name__} overrides {method}, which spa cannot reproduce when "
            "it fuses or compacts the layer; exclude it via `exclude_modules=`"
        )


def overridden_method(base: nn.Module) -> str | None:
    """`"Class.method"` of a Linear/ConvNd subclass's own forward computation, or None.

    A subclass that only changes the constructor (EfficientNet's depth-wise conv) computes what
    its plain torch type computes. One that overrides `forward` / `_conv_forward` is accepted
    when it still computes its plain type's function of the weight and bias, checked on a probe
    input (Falcon's `FalconLinear`: `x @ W.T + b`); one that computes something else (a weight-
    standardised conv) cannot be masked, sliced or fused exactly by spa.
    """
    plain = next((t for t in SUPPORTED_LAYERS if isinstance(base, t)), None)
    for method in ("forward", "_conv_forward"):
        if plain is not None and getattr(type(base), method, None) is not getattr(
            plain, method, None
        ):
            return None if _computes_plain(base, plain) else f"{plain.__name__}.{method}"
    return None


def _computes_plain(base: nn.Module, plain: type) -> bool:
    """True if `base`'s own forward gives what `plain.forward` gives on a seeded probe input."""
    weight = base.weight
    if weight.is_meta or not weight.is_floating_point():
        return False  # nothing to run: keep refusing what cannot be checked
    generator = torch.Generator().manual_seed(0)  # never the global seed
    if weight.dim() == 2:
        shape = (2, weight.shape[1])
    else:
        kernel = [k * d for k, d in zip(base.kernel_size, base.dilation)]
        shape = (2, weight.shape[1] * base.groups, *(k + 3 for k in kernel))
    probe = torch.randn(shape, generator=generator).to(weight.device, weight.dtype)
    try:
        with torch.no_grad():
            own = type(base).forward(base, probe)  # no hooks: the class's own computation
            if weight.dim() == 2:
                reference = F.linear(probe, weight, base.bias)
            else:
                reference = plain._conv_forward(base, probe, weight, base.bias)
    except Exception:  # noqa: BLE001 - a forward spa cannot run is a forward it cannot reproduce
        return False
    if not isinstance(own, torch.Tensor) or own.shape != reference.shape:
        return False
    return bool(torch.allclose(own, reference, rtol=1e-4, atol=1e-5))


def spatial_dims(base: nn.Module) -> int:
    """Number of spatial dimensions of the layer's weight (0 for Linear)."""
    return base.weight.dim() - 2


def groups_of(base: nn.Module) -> int:
    """Convolution groups (1 for Linear)."""
    return getattr(base, "groups", 1)


def centre_tap(base: nn.Module, name: str = "layer") -> tuple:
    """Index tuple selecting the kernel's centre tap: `(:, :, k0 // 2, k1 // 2, ...)`.

    The rule: the adapter acts at kernel index `k // 2` in every spatial dimension, which is a
    point-wise path aligned with the receptive field's centre. Even kernel sizes have no centre
    and are refused; PyTorch's symmetric integer padding, 'valid', and 'same' with odd kernels are
    all exact under this rule (the padding shifts base and adapter paths alike).

    Raises:
        UnsupportedLayerError: for even kernel sizes, naming the layer, kernel_size and padding.
    """
    kernel = tuple(base.weight.shape[2:])
    if any(k % 2 == 0 for k in kernel):
        raise UnsupportedLayerError(
            f"{name}: the SPLoRA conv adapter needs odd kernel sizes (a centre tap), got "
            f"kernel_size={kernel}, padding={getattr(base, 'padding', None)}; "
            "exclude it via `exclude_modules=`"
        )
    return (slice(None), slice(None)) + tuple(k // 2 for k in kernel)


def layer_forward(
    base: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Run `base`'s own operation (linear or conv with its stride, padding, ...) with `weight`."""
    if isinstance(base, nn.Linear):
        return F.linear(x, weight, bias)
    # The one place that touches torch's private conv entry point; it honours padding_mode.
    return base._conv_forward(x, weight, bias)


def padding_tuple(base: nn.Module) -> tuple[int, ...]:
    """The conv's padding as integers per spatial dimension ('valid'/'same' resolved)."""
    dims = spatial_dims(base)
    if isinstance(base.padding, str):
        if base.padding == "valid":
            return (0,) * dims
        # 'same' with odd kernels (checked by centre_tap) pads d * (k - 1) / 2 on each side.
        return tuple(d * (k - 1) // 2 for d, k in zip(base.dilation, base.weight.shape[2:]))
    return tuple(base.padding)


def centre_samples(base: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Input values at the centre tap of every output position of conv `base`.

    Returns a tensor of shape `(batch, in, *out_spatial)` such that a point-wise (1x1) operation
    on it equals convolving `x` with a kernel that is zero except at its centre tap.
    """
    dims = spatial_dims(base)
    padding = padding_tuple(base)
    kernel = base.weight.shape[2:]
    out_sizes = [
        (n + 2 * p - d * (k - 1) - 1) // s + 1
        for n, p, d, k, s in zip(x.shape[-dims:], padding, base.dilation, kernel, base.stride)
    ]
    if base.padding_mode != "zeros":
        # Pad exactly as the base conv does; the centre then sits at d * (k // 2).
        x = F.pad(x, [p for p in reversed(padding) for _ in range(2)], mode=base.padding_mode)
        offsets = [d * (k // 2) for d, k in zip(base.dilation, kernel)]
    else:
        offsets = [d * (k // 2) - p for d, k, p in zip(base.dilation, kernel, padding)]
        if any(o < 0 for o in offsets):  # padding wider than the kernel's half-width
            extra = [max(-o, 0) for o in offsets]
            x = F.pad(x, [e for e in reversed(extra) for _ in range(2)])
            offsets = [o + e for o, e in zip(offsets, extra)]
    index = [slice(None), slice(None)]
    for offset, stride, n in zip(offsets, base.stride, out_sizes):
        index.append(slice(offset, offset + stride * (n - 1) + 1, stride))
    return x[tuple(index)]


def pointwise(base: nn.Module, x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Apply an `(out, in/groups)` matrix point-wise with `base`'s groups (a 1x1 conv or linear).

    `x` must already be sampled at the centre taps (see `centre_samples`) for convolutions.
    """
    if isinstance(base, nn.Linear):
        return F.linear(x, matrix)
    dims = spatial_dims(base)
    kernel = matrix.reshape(matrix.shape + (1,) * dims)  # (out, in/groups, 1, ..., 1)
    return _POINTWISE_CONV[dims](x, kernel, groups=groups_of(base))


def channel_view(mask: torch.Tensor, weight_dim: int) -> torch.Tensor:
    """Reshape a per-output-channel vector to broadcast over an activation or weight tensor."""
    return mask.reshape((-1,) + (1,) * (weight_dim - 1))


def plain_type(base: nn.Module) -> type[nn.Module]:
    """The plain torch class (`nn.Linear` or `nn.Conv1d/2d/3d`) that `base` is an instance of.

    Raises:
        UnsupportedLayerError: for ConvTranspose or any other type.
    """
    check_supported(base, type(base).__name__)
    return next(t for t in SUPPORTED_LAYERS if isinstance(base, t))  # first match: Linear, ConvNd


def rebuild_layer(base: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A fresh plain layer with `base`'s hyper-parameters and the given weight/bias.

    Channel counts are read from `weight`, so the same function fuses and compacts every
    Linear/Conv dimension. For grouped convs the group count is kept. A subclass of a supported
    type (whose constructor may take other arguments, e.g. EfficientNet's depth-wise conv) is
    rebuilt as the plain `nn.Linear`/`nn.ConvNd` it derives from: its forward is that type's
    forward, so the outputs are identical.
    """
    out_channels = weight.shape[0]
    factory = {"device": weight.device, "dtype": weight.dtype}
    if isinstance(base, nn.Linear):
        layer = nn.Linear(weight.shape[1], out_channels, bias=bias is not None, **factory)
    else:
        groups = base.groups
        if base.groups == base.in_channels and base.groups == base.out_channels:
            groups = out_channels  # depth-wise stays depth-wise when channels are removed
        layer = plain_type(base)(
            weight.shape[1] * groups,
            out_channels,
            kernel_size=base.kernel_size,
            stride=base.stride,
            padding=base.padding,
            dilation=base.dilation,
            groups=groups,
            bias=bias is not None,
            padding_mode=base.padding_mode,
            **factory,
        )
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None and weight.is_meta and not bias.is_meta:
            # a `meta` weight placeholder (spa.compacted_for_save): the bias keeps its values
            layer.bias = nn.Parameter(bias.detach().clone())
        elif bias is not None:
            layer.bias.copy_(bias)
    layer.train(base.training)
    return layer
