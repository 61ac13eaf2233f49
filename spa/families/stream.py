"""The residual stream (hidden size) of a described family: every tensor that reads or writes it.

A transformer's hidden size is one set of channels shared by the whole model: every block's
attention and FFN input projections read it (input columns), their output projections write
it (output rows), every norm on it normalises over it, and the token, position and type
embeddings, class tokens and patch projection put it together. Pruning a hidden channel removes
it from all of them at once. Block projections come from the family's attention and FFN
descriptions; a `StreamDescription` names the rest. `stream_layout` resolves it on a model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from spa.adapters.transposed import is_transposed_linear, out_features
from spa.errors import ConfigError
from spa.families.description import (
    Family,
    block_layouts,
    describe,
    join_path,
    per_head_axes,
    tensor_at,
)

# Member roles: "in" input columns of a reader, "out" output rows of a writer, "norm" the
# channels of a norm, "param" one axis of a bare parameter.
StreamMember = tuple[str, str, int | None]


@dataclass(frozen=True)
class StreamLayout:
    """A stream description resolved on a model.

    Args:
        width: the hidden size (channels of the stream).
        members: `(path, role, axis)` of everything on the stream; `axis` only for "param"
            members (the tensor's stream axis).
        pooler: the pooler projection's path, or None (then the task head reads the stream).
    """

    width: int
    members: tuple[StreamMember, ...]
    pooler: str | None


def _search(names, pattern: str) -> list[str]:
    compiled = re.compile(pattern)
    return [name for name in names if name and compiled.search(name)]


def stream_tensors(model: nn.Module, family: Family) -> dict[str, int]:
    """Every bare parameter of `model` on the stream (full dotted path -> stream axis)."""
    stream = family.stream
    if stream is None:
        return {}
    paths = [
        f"{name}.{key}" if name else key
        for name, module in model.named_modules()
        for key, tensor in module._parameters.items()
        if tensor is not None
    ]
    return {path: axis for pattern, axis in stream.tensors.items() for path in _search(paths, pattern)}


def stream_layout(model: nn.Module, family: Family) -> StreamLayout:
    """Resolve `family.stream` on `model`: every module and tensor on the residual stream.

    Args:
        model: a model of `family` (adapted or not, masked or compacted).
        family: its description.

    Returns:
        The layout; its width is read from the first block norm.

    Raises:
        ConfigError: if the family describes no stream, a described path is missing, or a
            member's size on the stream axis differs from the width (the message names it).
    """
    stream = family.stream
    if stream is None:
        raise ConfigError(
            f"model family {family.name!r} does not describe its residual stream, so its hidden "
            "size cannot be pruned; prune units=('heads', 'ffn') instead"
        )
    modules = dict(model.named_modules())
    members: list[StreamMember] = []
    for layout in block_layouts(model, family):
        readers = [layout.qkv] if layout.qkv else [layout.query, layout.key, layout.value]
        members += [(path, "in", None) for path in [*readers, *layout.ffn_inputs]]
        members += [(layout.output, "out", None), (layout.ffn_output, "out", None)]
        for relative in stream.block_norms:
            path = join_path(layout.path, relative)
            if path not in modules:
                raise ConfigError(
                    f"model family {family.name!r}: block {layout.path!r} has no norm {path!r}; "
                    "the model does not match its family description"
                )
            members.append((path, "norm", None))
    for pattern in stream.norms:
        members += [(path, "norm", None) for path in _search(modules, pattern)]
    for pattern in stream.writers:
        members += [(path, "out", None) for path in _search(modules, pattern)]
    members += [(path, "param", axis) for path, axis in stream_tensors(model, family).items()]
    poolers = _search(modules, stream.pooler) if stream.pooler else []
    members += [(path, "in", None) for path in poolers]
    width = _size(model, *members[0])
    for member in members:
        if _size(model, *member) != width:
            raise ConfigError(
                f"model family {family.name!r}: {member[0]} has {_size(model, *member)} channels "
                f"on the residual stream, the first block's projection has {width}; the model "
                "does not match its family description"
            )
    return StreamLayout(width=width, members=tuple(members), pooler=poolers[0] if poolers else None)


def _size(model: nn.Module, path: str, role: str, axis: int | None) -> int:
    """A member's number of stream channels."""
    if role == "param":
        return tensor_at(model, path).shape[axis]
    module = model.get_submodule(path)
    if role == "norm":
        return module.weight.shape[-1]
    base = getattr(module, "base", module)
    if role == "out":
        return out_features(base)
    return base.weight.shape[0 if is_transposed_linear(base) else 1] * getattr(base, "groups", 1)


def sliced_tensor_axes(model: nn.Module) -> dict[str, int]:
    """Every described bare tensor that pruning may narrow (full dotted path -> its axis).

    Per-head tensors (`per_head_axes`) and the stream tensors (embeddings, class tokens) of a
    model of a described family; empty for any other model.
    """
    family = describe(model)
    if family is None:
        return {}
    return {**per_head_axes(model), **stream_tensors(model, family)}
