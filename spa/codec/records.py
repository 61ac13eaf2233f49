"""Module-tree helpers for bundles: weight-sharing structural copies and attribute differences.

A task changes a base model in two ways only: tensors (new values or smaller shapes) and the
simple attributes that describe shapes (`in_features`, `num_features`, `groups`, ...). These
helpers record the attribute changes as JSON-ready values and re-apply them safely: only
attributes that already exist on the base module with a simple value can be set.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# Module attributes that never describe a task (mode flags, not structure).
_IGNORED_ATTRIBUTES = frozenset({"training"})
# Per-module tables a structural copy must not share with the original.
_MODULE_TABLES = (
    "_parameters",
    "_buffers",
    "_non_persistent_buffers_set",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


def structural_copy(model: nn.Module) -> nn.Module:
    """A copy of `model`'s module tree that shares every parameter and buffer with `model`.

    Every module is a new object with its own parameter, buffer, sub-module and hook tables, so
    replacing a tensor, an attribute or a sub-module in the copy leaves `model` untouched; no
    tensor is copied. Other attribute values are shared (they are replaced, never mutated, when
    a task is applied). A module that appears twice in the tree is copied once.
    """
    return _copy_module(model, {})


def _copy_module(module: nn.Module, memo: dict[int, nn.Module]) -> nn.Module:
    if id(module) in memo:
        return memo[id(module)]
    new = object.__new__(type(module))  # what copy.copy does, without its generic overhead
    state = new.__dict__
    state.update(module.__dict__)
    memo[id(module)] = new
    for table in _MODULE_TABLES:
        value = state.get(table)
        if value is not None:
            state[table] = value.copy()  # dict / OrderedDict / set, same type
    new._modules = {
        name: None if child is None else _copy_module(child, memo)
        for name, child in module._modules.items()
    }
    return new


def _is_simple(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | str):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, tuple | list):
        return all(_is_simple(item) for item in value)
    return False


def simple_attributes(module: nn.Module) -> dict[str, Any]:
    """The module's public attributes holding None, bool, int, finite float, str or tuples."""
    return {
        key: value
        for key, value in vars(module).items()
        if not key.startswith("_") and key not in _IGNORED_ATTRIBUTES and _is_simple(value)
    }


def _to_json(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_to_json(item) for item in value]
    return value


def attribute_changes(module: nn.Module, base_module: nn.Module) -> dict[str, Any]:
    """Simple attributes of `module` whose values differ from `base_module`'s, JSON-ready."""
    base = simple_attributes(base_module)
    return {
        key: _to_json(value)
        for key, value in simple_attributes(module).items()
        if key in base and _to_json(base[key]) != _to_json(value)
    }


def _like(value: Any, reference: Any) -> Any:
    """Convert a JSON value back to the container types of `reference` (tuples stay tuples)."""
    if isinstance(value, list) and isinstance(reference, tuple | list):
        items = [
            _like(item, reference[0] if reference else None) if isinstance(item, list) else item
            for item in value
        ]
        return tuple(items) if isinstance(reference, tuple) else items
    return value


Size = Callable[[str], Any]


def _linear_shapes(size: Size, module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {"weight": (size("out_features"), size("in_features")), "bias": (size("out_features"),)}


def _conv_shapes(size: Size, module: nn.Module) -> dict[str, tuple[int, ...]]:
    if module.transposed:
        return {}
    out_channels, in_channels, groups = size("out_channels"), size("in_channels"), size("groups")
    if in_channels % groups or out_channels % groups:
        return {"weight": (-1,)}  # no tensor fits: channels must divide into the groups
    kernel = tuple(module.kernel_size)
    return {"weight": (out_channels, in_channels // groups, *kernel), "bias": (out_channels,)}


def _norm_shapes(size: Size, module: nn.Module) -> dict[str, tuple[int, ...]]:
    channels = (size("num_features"),)
    shapes = dict.fromkeys(("weight", "bias", "running_mean", "running_var"), channels)
    return {**shapes, "num_batches_tracked": ()}


def _layer_norm_shapes(size: Size, module: nn.Module) -> dict[str, tuple[int, ...]]:
    return dict.fromkeys(("weight", "bias"), tuple(size("normalized_shape")))


def _group_norm_shapes(size: Size, module: nn.Module) -> dict[str, tuple[int, ...]]:
    if size("num_channels") % size("num_groups"):
        return {"weight": (-1,)}
    return dict.fromkeys(("weight", "bias"), (size("num_channels"),))


def _embedding_shapes(size: Size, module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {"weight": (size("num_embeddings"), size("embedding_dim"))}


# Known layer types (first match wins): the attributes that size their tensors, the only ones a
# task may change on them, and the tensor shapes those attributes imply.
_SHAPE_RULES: tuple[tuple[type, frozenset[str], Callable[[Size, nn.Module], dict]], ...] = (
    (nn.Linear, frozenset({"in_features", "out_features"}), _linear_shapes),
    (nn.modules.conv._ConvNd, frozenset({"in_channels", "out_channels", "groups"}), _conv_shapes),
    (nn.modules.batchnorm._BatchNorm, frozenset({"num_features"}), _norm_shapes),
    (nn.modules.instancenorm._InstanceNorm, frozenset({"num_features"}), _norm_shapes),
    (nn.LayerNorm, frozenset({"normalized_shape"}), _layer_norm_shapes),
    (nn.GroupNorm, frozenset({"num_channels", "num_groups"}), _group_norm_shapes),
    (nn.Embedding, frozenset({"num_embeddings", "embedding_dim"}), _embedding_shapes),
)


def _same_kind(value: Any, old: Any) -> bool:
    """True if JSON `value` can replace `old`: integers stay integers of the same sign, lists
    of the same length replace tuples/lists element-wise; nothing else may change."""
    if isinstance(old, bool) or isinstance(value, bool):
        return False
    if isinstance(old, int):
        return isinstance(value, int) and value >= min(old, 1)
    if isinstance(old, tuple | list):
        return (
            isinstance(value, list)
            and len(value) == len(old)
            and all(_same_kind(v, o) for v, o in zip(value, old, strict=True))
        )
    return False


def check_attribute_changes(module: nn.Module, changes: dict[str, Any]) -> str | None:
    """Why `changes` cannot be applied to `module` (None if they can).

    Only size attributes can change: integers (positive ones stay positive) and lists of them
    replacing tuples of the same length; on known layer types only the attributes that size
    their tensors (so strides, paddings, modes and flags of a Conv or a norm never change).
    """
    current = simple_attributes(module)
    allowed = next((names for kind, names, _ in _SHAPE_RULES if isinstance(module, kind)), None)
    for key, value in changes.items():
        if key not in current:
            return f"attribute {key!r} does not exist on {type(module).__name__}"
        if allowed is not None and key not in allowed:
            return f"attribute {key!r} of a {type(module).__name__} cannot change"
        if not _same_kind(value, current[key]):
            return f"attribute {key!r}: {value!r} cannot replace {current[key]!r}"
    return None


def expected_shapes(module: nn.Module, changes: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Tensor shapes that `module`'s type implies once `changes` are applied (empty if unknown).

    Covers Linear, Conv1d/2d/3d, batch/instance/layer/group norms and Embedding (`_SHAPE_RULES`),
    so tensors and size attributes of a changed module can be checked against each other
    before building.
    """
    rule = next((rule for kind, _, rule in _SHAPE_RULES if isinstance(module, kind)), None)
    if rule is None:
        return {}
    return rule(lambda key: changes.get(key, getattr(module, key)), module)


def converted_attributes(module: nn.Module, changes: dict[str, Any]) -> dict[str, Any]:
    """Recorded attribute values (validated by `check_attribute_changes`) in the container types
    of `module`'s current values (JSON lists become tuples where the module has tuples)."""
    current = simple_attributes(module)
    return {key: _like(value, current[key]) for key, value in changes.items()}


def apply_attribute_changes(module: nn.Module, changes: dict[str, Any]) -> None:
    """Set recorded attribute values on `module` (validated by `check_attribute_changes`)."""
    for key, value in converted_attributes(module, changes).items():
        setattr(module, key, value)


def direct_tensors(module: nn.Module) -> dict[str, tuple[str, torch.Tensor]]:
    """`{name: (role, tensor)}` of the module's own parameters and persistent buffers.

    The role is "parameter" or "buffer"; None entries and non-persistent buffers (derived state such
    as hook masks) are left out.
    """
    tensors = {name: ("parameter", t) for name, t in module._parameters.items() if t is not None}
    transient = module._non_persistent_buffers_set
    tensors.update(
        {
            name: ("buffer", t)
            for name, t in module._buffers.items()
            if t is not None and name not in transient
        }
    )
    return tensors


def set_tensor(module: nn.Module, name: str, role: str, tensor: torch.Tensor | None) -> None:
    """Install `tensor` as parameter (frozen) or buffer `name` of `module`, replacing any old one.

    The module's other tensors are untouched; the old tensor object (possibly shared with a
    base model) is not modified.
    """
    module._parameters.pop(name, None)
    module._buffers.pop(name, None)
    if role == "parameter":
        parameter = None if tensor is None else nn.Parameter(tensor, requires_grad=False)
        module._parameters[name] = parameter
    else:
        module._buffers[name] = tensor


def replace_parameter(module: nn.Module, name: str, tensor: torch.Tensor | None) -> None:
    """Install `tensor` as parameter `name` of `module`, trainable iff the old one was.

    The old parameter object (possibly shared with a base model) is not modified.
    """
    old = module._parameters.get(name)
    trains = old is not None and old.requires_grad
    module._parameters[name] = None if tensor is None else nn.Parameter(tensor, trains)


def same_tensor(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """True if both are None, or have equal dtype, shape and values."""
    if a is None or b is None:
        return a is None and b is None
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.detach(), b.detach())


def narrowing(tensor: torch.Tensor, base: torch.Tensor | None) -> tuple[int, torch.Tensor] | None:
    """`(axis, kept indices)` if `tensor` is `base` with slices removed on one axis, else None.

    Pruning the hidden size narrows frozen base tensors (token and position embeddings, a tied
    LM head) without changing their values; a bundle then stores the kept indices instead of
    the tensor. Only tensors of two or more axes are considered (for a vector the indices
    would be no smaller).
    """
    if base is None or tensor.dtype != base.dtype or tensor.dim() != base.dim() or tensor.dim() < 2:
        return None
    axes = [d for d in range(base.dim()) if tensor.shape[d] != base.shape[d]]
    if len(axes) != 1 or tensor.shape[axes[0]] > base.shape[axes[0]]:
        return None
    axis = axes[0]
    wanted, source = tensor.detach().movedim(axis, 0), base.detach().movedim(axis, 0)
    kept: list[int] = []
    for index in range(source.shape[0]):  # the kept slices are an ordered subsequence
        if len(kept) < wanted.shape[0] and torch.equal(source[index], wanted[len(kept)]):
            kept.append(index)
    if len(kept) != wanted.shape[0]:
        return None
    return axis, torch.tensor(kept, dtype=torch.int64)


def select(
    weight: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor | None
) -> torch.Tensor:
    """`weight[rows][:, cols]` in one gather (a new tensor; None selects everything)."""
    if rows is None and cols is None:
        return weight.detach().clone()
    if rows is None:
        return weight.detach().index_select(1, cols.to(weight.device))
    if cols is None:
        return weight.detach().index_select(0, rows.to(weight.device))
    weight = weight.detach()
    rows, cols = rows.to(weight.device), cols.to(weight.device)
    if weight.dim() > 2 and weight[0, 0].numel() > 1:
        # One gather of whole kernels: flat (out * in, taps) rows, much faster than two passes.
        out_channels, in_channels = weight.shape[:2]
        flat = (rows[:, None] * in_channels + cols).reshape(-1)
        kernels = weight.reshape(out_channels * in_channels, -1).index_select(0, flat)
        return kernels.reshape(len(rows), len(cols), *weight.shape[2:])
    return weight.index_select(0, rows).index_select(1, cols)


# Compaction's record of kept base positions (`spa.codec.kept` writes it): a module attribute.
KEPT_ATTRIBUTE = "_spa_kept"
# Marks a tensor whose kept positions cannot be one axis's indices (narrowed on two axes).
KEPT_UNKNOWN = "unknown"


def recorded(module: nn.Module, key: str) -> tuple[int, torch.Tensor] | None:
    """`(axis, kept base positions)` compaction recorded for tensor `key` of `module`, or None.

    Args:
        module: a module compacted by `spa.compact`.
        key: the name of one of its own parameters or buffers.

    Returns:
        The axis and the int64 positions of the base tensor that the tensor keeps (in order),
        or None when compaction did not narrow it on one axis (or never ran).
    """
    record = getattr(module, KEPT_ATTRIBUTE, {}).get(key)
    return None if record is None or record == KEPT_UNKNOWN else record


def same_as_kept(
    tensor: torch.Tensor, base: torch.Tensor, axis: int, kept: torch.Tensor, chunk: int = 1024
) -> bool:
    """True if `tensor` equals `base` at the `kept` positions of `axis` (compared `chunk`
    slices at a time, so no copy of the kept base slices is made at once)."""
    if tensor.shape[axis] != len(kept) or tensor.dtype != base.dtype:
        return False
    for start in range(0, len(kept), chunk):
        part = kept[start : start + chunk].to(base.device)
        if not torch.equal(tensor.narrow(axis, start, len(part)), base.index_select(axis, part)):
            return False
    return True
