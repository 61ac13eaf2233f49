"""The residual stream (hidden size) of a described family: every tensor that reads or writes it.

A transformer's hidden size is one set of channels shared by the whole model: every block's
attention and FFN input projections read it (input columns), their output projections write
it (output rows), every norm on it normalises over it, and the token, position and type
embeddings, class tokens and patch projection put it together. Pruning a hidden channel removes
it from all of them at once. Block projections come from the family's attention and FFN
descriptions; a `StreamDescription` names the rest. `stream_layouts` resolves it on a model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from spa.adapters.modules import is_norm, is_weightless_norm, norm_channels
from spa.adapters.transposed import is_transposed_linear, out_features
from spa.errors import ConfigError
from spa.families.description import Family
from spa.families.layouts import block_layouts, ffn_layouts, join_path, tensor_at
from spa.families.match import describe, per_head_axes

# (path, role, axis, parts). Roles: "in" input columns of a reader, "out" output rows of a
# writer, "norm" the channels of a norm, "param" one axis (`axis`) of a bare parameter. A
# member with `parts` > 1 holds the stream that many times side by side (a patch merge's
# concatenation of neighbouring tokens): its position `k * width + c` is channel `c`.
StreamMember = tuple[str, str, int | None, int]


@dataclass(frozen=True)
class StreamLayout:
    """A stream description resolved on a model.

    Args:
        width: the hidden size (channels of the stream).
        members: `(path, role, axis, parts)` of everything on the stream (see
            `StreamMember`): its pooler, or else the task head, among the readers.
    """

    width: int
    members: tuple[StreamMember, ...]


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
    tensors = stream.tensors.items()
    return {path: axis for pattern, axis in tensors for path in _search(paths, pattern)}


def stream_layouts(
    model: nn.Module, family: Family, head: Sequence[str] = ()
) -> list[StreamLayout]:
    """Resolve `family.stream` on `model`: every module and tensor on each residual stream.

    A model has one stream, or one per stage where patch merging changes the width (Swin).
    Model-level members (embeddings, their norm, the final norm, the head) join the stage
    their path names (a tower of a two-tower model), else the stage of their width.

    Args:
        model: a model of `family` (adapted or not, masked or compacted).
        family: its description.
        head: the task head's modules; they read the stream where no pooler does (modules
            inside a block are described there already and skipped).

    Returns:
        One layout per stage, in module order; each width is its first block's input width.

    Raises:
        ConfigError: if the family describes no stream, a described path is missing, or a
            member's size does not fit its stream (the message names it).
    """
    stream = family.stream
    if stream is None:
        raise ConfigError(
            f"model family {family.name!r} does not describe its residual stream, so its hidden "
            "size cannot be pruned; prune units=('heads', 'ffn') instead"
        )
    modules = dict(model.named_modules())
    for pattern, what in stream.unsliced.items():
        for path in _search(modules, pattern):
            raise ConfigError(
                f"model family {family.name!r}: {path} ({what}) reads the residual stream in a "
                "way spa does not slice, so the hidden size cannot be pruned; prune "
                "units=('heads', 'ffn') instead"
            )
    stages: dict[str, list[StreamMember]] = {}
    layouts = block_layouts(model, family)
    # A "head" inside a block (a bare encoder's last projection) is one of its projections.
    head = [h for h in head if not _in_block(h, layouts)]
    for layout in layouts:
        found = re.search(stream.stages, layout.path) if stream.stages else None
        members = stages.setdefault(found.group(1) if found else "", [])
        readers = [layout.qkv] if layout.qkv else [layout.query, layout.key, layout.value]
        ffns = ffn_layouts(layout)
        inputs = [path for ffn in ffns for path in ffn.ffn_inputs]
        inputs += [join_path(layout.path, reader) for reader in stream.readers]
        members += [(path, "in", None, 1) for path in [*readers, *inputs]]
        members += [(layout.output, "out", None, 1)]
        members += [(ffn.ffn_output, "out", None, 1) for ffn in ffns]
        optional = [
            relative
            for relative in stream.optional_block_norms
            if join_path(layout.path, relative) in modules
        ]
        for relative in (*stream.block_norms, *optional):
            path = join_path(layout.path, relative)
            if path not in modules:
                raise ConfigError(
                    f"model family {family.name!r}: block {layout.path!r} has no norm {path!r}; "
                    "the model does not match its family description"
                )
            if not isinstance(modules[path], nn.Identity):  # ModernBERT's first attention norm
                members.append((path, "norm", None, 1))
    per_stage = list(stages.values())
    _add_merges(family, modules, per_stage)
    widths = [_size(model, *members[0]) for members in per_stage]
    poolers = _search(modules, stream.pooler) if stream.pooler else []
    loose = [
        (path, "norm", None, 1)
        for p in stream.norms
        for path in _search(modules, p)
        if not isinstance(modules[path], nn.Identity)  # e.g. a final norm mean pooling skips
    ]
    loose += [(path, "out", None, 1) for p in stream.writers for path in _search(modules, p)]
    loose += [(path, "param", axis, 1) for path, axis in stream_tensors(model, family).items()]
    # Model-level readers of a named stage (CLIP's projections, one per tower).
    readers = {
        path: stage
        for pattern, stage in stream.stage_readers.items()
        for path in _search(modules, pattern)
    }
    loose += [(path, "in", None, 1) for path in readers]
    loose += [(path, "in", None, 1) for path in (poolers or head) if path not in readers]
    names = list(stages)
    for member in loose:
        size = _size(model, *member)
        named = readers.get(member[0]) or _named_stage(stream.stages, member[0])
        stage = [names.index(named)] if named in names else []
        stage = stage or [i for i, width in enumerate(widths) if width == size]
        if len(stage) != 1:
            raise ConfigError(
                f"model family {family.name!r}: {member[0]} has {size} channels, which is not "
                f"the width of exactly one residual stream {widths}; the model does not match "
                "its family description"
            )
        per_stage[stage[0]].append(member)
    _check_norms_covered(family, modules, layouts, per_stage, widths, poolers)
    for width, members in zip(widths, per_stage):
        for member in members:
            size = _size(model, *member)
            if size != width * member[3]:
                raise ConfigError(
                    f"model family {family.name!r}: {member[0]} has {size} channels, its "
                    f"residual stream has {width} (x {member[3]}); the model does not match "
                    "its family description"
                )
    return [StreamLayout(width, tuple(members)) for width, members in zip(widths, per_stage)]


def _check_norms_covered(
    family: Family,
    modules: dict,
    layouts: list,
    stages: list[list[StreamMember]],
    widths: list,
    poolers: list[str],
) -> None:
    """Refuse a model-level norm over a stream's width that the description does not name (XGLM's
    final `layer_norm` under OPT's layout): pruning the hidden size would leave it unsliced, and
    compaction would fail only after training. A norm beside the pooler (ModernBERT's
    `head.norm`) normalises the pooler's output, not the stream."""
    members = {member[0] for stage in stages for member in stage}
    beside_pooler = {pooler.rpartition(".")[0] for pooler in poolers}
    for path, module in modules.items():
        if path in members or _in_block(path, layouts) or path.rpartition(".")[0] in beside_pooler:
            continue
        if not is_norm(module):
            continue
        if norm_channels(module) in widths:
            raise ConfigError(
                f"model family {family.name!r}: the norm {path} over {norm_channels(module)} "
                "channels is outside the blocks and not on the described residual stream, so "
                "the hidden size cannot be pruned; prune units=('heads', 'ffn') instead"
            )


def _in_block(path: str, layouts: list) -> bool:
    """Whether `path` lies inside one of the blocks (described there, not at model level)."""
    return any(path.startswith(f"{layout.path}.") for layout in layouts)


def _named_stage(pattern: str | None, path: str) -> str | None:
    """The stage a model-level member's path names (a tower's embeddings), if any."""
    found = re.search(pattern, path) if pattern else None
    return found.group(1) if found else None


def _add_merges(family: Family, modules: dict, stages: list[list[StreamMember]]) -> None:
    """Merge `i` reads stage `i` (its norm and reduction inputs, `parts` x the width) and
    writes stage `i + 1` (the reduction's output rows)."""
    merge = family.stream.merging
    if merge is None:
        return
    norms, reductions = _search(modules, merge.norm), _search(modules, merge.reduction)
    if not len(norms) == len(reductions) == len(stages) - 1:
        raise ConfigError(
            f"model family {family.name!r}: {len(stages)} stages need {len(stages) - 1} patch "
            f"merges, found norms {norms} and reductions {reductions}; the model does not "
            "match its family description"
        )
    for index, (norm, reduction) in enumerate(zip(norms, reductions)):
        stages[index] += [(norm, "norm", None, merge.parts), (reduction, "in", None, merge.parts)]
        stages[index + 1].append((reduction, "out", None, 1))


def _size(model: nn.Module, path: str, role: str, axis: int | None, parts: int = 1) -> int:
    """A member's number of stream channels."""
    if role == "param":
        return tensor_at(model, path).shape[axis]
    module = model.get_submodule(path)
    if role == "norm":
        if getattr(module, "weight", None) is None and not is_weightless_norm(module):
            raise ConfigError(
                f"{path}: a {type(module).__name__} without a weight or a one-axis "
                "normalized_shape cannot be marked as a member of the hidden size; prune "
                "units=('heads', 'ffn') instead"
            )
        return norm_channels(module)
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
