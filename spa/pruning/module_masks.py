"""Channel masks on modules that are not adapter layers: norms, the head, excluded layers.

`SPLoRALayer` masks its own rows and columns. A removed channel must also vanish from every
other module it passes through, or the masked model would differ from the compacted one (a
BatchNorm shift would revive it, the head would still read it). Such modules get a
non-persistent boolean buffer and a hook:

- `spa_out_mask` (output channels; a norm layer's channels) with a forward hook that zeroes the
  removed output channels. A `LayerNorm` is recomputed over the kept features only, so its
  statistics match the compacted layer exactly; so are RMSNorm and any other norm over the last
  axis (`spa.pruning.norms`).
- `spa_in_mask` (input channels) with a forward pre-hook that zeroes the removed inputs.
- `spa_parameter_mask__<name>` for a bare per-channel parameter of a module (e.g. ConvNeXt's
  `layer_scale_parameter`, or a per-head tensor such as Swin's relative position bias table):
  no hook (it only acts on channels that are already zero), but `spa.compact` slices the
  tensor with it on the axis the mask's shape marks.

A norm's channel axis depends on its data format: `LayerNorm` normalises the last axis, a
`LayerNorm` subclass with `data_format="channels_first"` (ConvNeXt) the axis 1, BatchNorm and
InstanceNorm the axis 1 (see `channel_dim`).

The buffers are non-persistent, so `state_dict` keys do not change; hooks are module-level
functions that read the buffer from the module they are called on, so `copy.deepcopy` keeps
working. `spa.compact` removes both after slicing the module.
"""

from __future__ import annotations

import torch
from torch import nn

from spa.pruning.norms import is_last_axis_norm, normalise_kept

OUT_MASK = "spa_out_mask"
IN_MASK = "spa_in_mask"
PARAMETER_MASK = "spa_parameter_mask__"
# LayerNorm data formats (the `data_format` attribute of e.g. ConvNeXt's norm) -> channel axis.
_DATA_FORMATS = {"channels_last": -1, "channels_first": 1}


def layer_norm_dim(module: nn.LayerNorm) -> int | None:
    """The axis a (one-dimensional) LayerNorm normalises, or None if spa cannot tell.

    A plain `nn.LayerNorm` normalises the last axis. A subclass that overrides `forward` must
    say how through a known `data_format` ("channels_last" -> -1, "channels_first" -> 1).
    """
    data_format = getattr(module, "data_format", None)
    if data_format is not None:
        return _DATA_FORMATS.get(data_format)
    return -1 if type(module).forward is nn.LayerNorm.forward else None


def channel_dim(module: nn.Module) -> int:
    """The channel axis of the module's activations.

    Last for Linear and channels-last LayerNorm, 1 for convolutions, BatchNorm/InstanceNorm and a
    channels-first LayerNorm (`data_format="channels_first"`, as in ConvNeXt).
    """
    if isinstance(module, nn.LayerNorm):
        dim = layer_norm_dim(module)
        return -1 if dim is None else dim
    return -1 if isinstance(module, nn.Linear) or is_last_axis_norm(module) else 1


def _view(mask: torch.Tensor, like: torch.Tensor, dim: int) -> torch.Tensor:
    if dim == -1 or like.dim() == 2:
        return mask.to(like.dtype)
    return mask.to(like.dtype).reshape((-1,) + (1,) * (like.dim() - 2))


def _mask_output(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    mask = getattr(module, OUT_MASK)
    dim = channel_dim(module)
    if isinstance(module, nn.LayerNorm) or is_last_axis_norm(module):
        # Normalise over the kept channels only, as the compacted norm does.
        kept = mask.nonzero().flatten()
        normed = normalise_kept(module, args[0].movedim(dim, -1), kept)  # channels last
        return torch.zeros_like(output).index_copy(dim, kept, normed.movedim(-1, dim))
    return output * _view(mask, output, dim)


def _mask_input(module: nn.Module, args: tuple) -> tuple:
    mask = getattr(module, IN_MASK)
    x = args[0]
    return (x * _view(mask, x, channel_dim(module)),) + tuple(args[1:])


def _has_hook(hooks: dict, function) -> bool:
    return any(hook is function for hook in hooks.values())


def set_module_mask(module: nn.Module, kind: str, mask: torch.Tensor) -> None:
    """Give a plain module a channel mask (`kind` "out" or "in") and the hook that applies it.

    Args:
        module: a non-adapter module (norm, Linear/Conv head or excluded layer).
        kind: "out" for output channels (a norm layer's channels), "in" for input channels.
        mask: boolean, True = kept.
    """
    attr = OUT_MASK if kind == "out" else IN_MASK
    device = _mask_device(next(iter(module.parameters()), mask), mask)
    module.register_buffer(attr, mask.to(device=device, dtype=torch.bool), persistent=False)
    if kind == "out" and not _has_hook(module._forward_hooks, _mask_output):
        module.register_forward_hook(_mask_output)
    if kind == "in" and not _has_hook(module._forward_pre_hooks, _mask_input):
        module.register_forward_pre_hook(_mask_input)


def _mask_device(tensor: torch.Tensor, mask: torch.Tensor) -> torch.device:
    # A mask keeps its values beside a meta-device model (planning without weights, issue 22).
    return mask.device if tensor.is_meta else tensor.device


def parameter_dim(parameter: torch.Tensor) -> int:
    """The channel axis of a bare per-channel parameter: its last axis longer than one."""
    dims = [d for d, size in enumerate(parameter.shape) if size > 1]
    return dims[-1] if dims else parameter.dim() - 1


def set_parameter_mask(
    module: nn.Module, name: str, mask: torch.Tensor, dim: int | None = None
) -> None:
    """Record which channels of the bare tensor `module.<name>` are kept (no hook).

    The mask is stored shaped to broadcast against the tensor (its length on the channel
    axis, 1 elsewhere), so it carries its axis to `spa.compact` (see `parameter_mask_dim`).

    Args:
        module: the module that owns the parameter or buffer.
        name: the parameter's attribute name.
        mask: boolean over the channel axis, True = kept.
        dim: the channel axis; None takes `parameter_dim` (a per-channel vector's one axis).
    """
    tensor = getattr(module, name)
    dim = parameter_dim(tensor) if dim is None else dim
    shape = [1] * tensor.dim()
    shape[dim] = mask.numel()
    module.register_buffer(
        PARAMETER_MASK + name,
        mask.to(device=_mask_device(tensor, mask), dtype=torch.bool).reshape(shape),
        persistent=False,
    )


def parameter_mask_dim(mask: torch.Tensor, tensor: torch.Tensor) -> int:
    """The channel axis a mask from `set_parameter_mask` was recorded for on `tensor`."""
    dims = [d for d, size in enumerate(mask.shape) if size > 1]
    if dims:
        return dims[0]
    # A one-channel mask: the axis where the tensor has that one channel.
    return max(d for d, size in enumerate(tensor.shape) if size == mask.numel())


def parameter_masks(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's bare-parameter masks by parameter name."""
    return {
        key[len(PARAMETER_MASK) :]: buffer
        for key, buffer in module._buffers.items()
        if key.startswith(PARAMETER_MASK) and buffer is not None
    }


def module_mask(module: nn.Module, kind: str) -> torch.Tensor | None:
    """The module's hook mask of `kind` ("out" or "in"), or None if it has none."""
    return getattr(module, OUT_MASK if kind == "out" else IN_MASK, None)


def remove_module_masks(module: nn.Module) -> None:
    """Remove both hook masks and their hooks from `module` (a no-op without them)."""
    for key in [k for k, hook in module._forward_hooks.items() if hook is _mask_output]:
        del module._forward_hooks[key]
    for key in [k for k, hook in module._forward_pre_hooks.items() if hook is _mask_input]:
        del module._forward_pre_hooks[key]
    for attr in (OUT_MASK, IN_MASK, *(PARAMETER_MASK + n for n in parameter_masks(module))):
        if attr in module._buffers:
            del module._buffers[attr]


def suspend_hooks(model: nn.Module) -> list[tuple[nn.Module, str, object]]:
    """Detach the mask hooks of every module (tracing must see plain ops); see `resume_hooks`.

    Returns:
        What to pass to `resume_hooks`.
    """
    suspended = []
    for module in model.modules():
        for table, function in (
            (module._forward_hooks, _mask_output),
            (module._forward_pre_hooks, _mask_input),
        ):
            for key in [k for k, hook in table.items() if hook is function]:
                del table[key]
                suspended.append((module, "pre" if function is _mask_input else "post", function))
    return suspended


def resume_hooks(suspended: list[tuple[nn.Module, str, object]]) -> None:
    """Re-register hooks removed by `suspend_hooks`."""
    for module, kind, function in suspended:
        if kind == "pre":
            module.register_forward_pre_hook(function)
        else:
            module.register_forward_hook(function)
