"""A family description resolved on a model: full dotted paths of every block's units."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from spa.adapters.transposed import out_features
from spa.errors import ConfigError
from spa.families.description import Family, FeedForwardDescription


@dataclass(frozen=True)
class BlockLayout:
    """A family description resolved on one block of a model: full dotted paths.

    Args:
        path: the block.
        attention: the module holding the head attributes.
        head_dim: the head dimension read from it.
        query, key, value, qkv, output: attention projections (None where not used).
        ffn: the feed-forward module.
        ffn_inputs: its row-side projections (up, gate).
        ffn_output: its column-side projection (down).
        ffn_activation: its activation module, if described.
        per_head: per-head tensors (full dotted path of a parameter or buffer, head axis).
        per_kv_head: tensors with one slice per key/value head (full dotted path, axis).
        qkv_layout: the fused projection's row order (`AttentionDescription.qkv_layout`).
        kv_groups: query heads per key/value head, read where a fused `qkv` needs it, else 1.
        ffn_chunks: equal parts of each FFN input's rows (`FeedForwardDescription.chunks`).
        head_norms: norms over one head's channels (full dotted paths).
        joint_norms: norms over all query or key heads together (full dotted path, "query"
            or "key"), see `AttentionDescription.joint_norms`.
        more_ffns: the block's further FFNs (experts after the first, shared experts), each a
            copy of this layout with its own `ffn*` fields (see `ffn_layouts`).
    """

    path: str
    attention: str
    head_dim: int
    query: str | None
    key: str | None
    value: str | None
    qkv: str | None
    output: str
    ffn: str
    ffn_inputs: tuple[str, ...]
    ffn_output: str
    ffn_activation: str | None = None
    per_head: tuple[tuple[str, int], ...] = ()
    per_kv_head: tuple[tuple[str, int], ...] = ()
    qkv_layout: str = "blocked"
    kv_groups: int = 1
    ffn_chunks: int = 1
    head_norms: tuple[str, ...] = ()
    joint_norms: tuple[tuple[str, str], ...] = ()
    more_ffns: tuple[BlockLayout, ...] = ()


def ffn_layouts(layout: BlockLayout) -> tuple[BlockLayout, ...]:
    """Every FFN of a block (one per expert and shared expert), each in a layout's `ffn*`
    fields: `layout` itself first, then `layout.more_ffns`."""
    return (layout, *layout.more_ffns)


def _ffn_paths(
    block: str, ffn: FeedForwardDescription, modules: Mapping[str, nn.Module], family: Family
) -> list[dict]:
    """The `ffn*` fields of each FFN `ffn` describes in `block` (one per expert, if experts)."""
    count = 1
    if ffn.experts is not None:
        holder = modules.get(join_path(block, ffn.module))
        count = getattr(holder, ffn.experts, None)
        if not isinstance(count, int) or count < 1:
            raise ConfigError(
                f"model family {family.name!r}: {join_path(block, ffn.module)}.{ffn.experts} "
                f"should hold the number of experts (a positive int), got {count!r}"
            )
    first = join_path(block, ffn.inputs[0].format(expert=0))
    if ffn.experts is not None and first not in modules:
        raise ConfigError(
            f"model family {family.name!r}: {join_path(block, ffn.module)} has no per-expert "
            f"layer {first!r} (3-D expert parameters?); split its experts first with "
            "spa.families.split_experts(model)"
        )
    return [
        {
            "ffn": join_path(block, ffn.module),
            "ffn_inputs": tuple(join_path(block, p.format(expert=e)) for p in ffn.inputs),
            "ffn_output": join_path(block, ffn.output.format(expert=e)),
            "ffn_activation": join_path(block, ffn.activation),
            "ffn_chunks": ffn.chunks,
        }
        for e in range(count)
    ]


def config_of(model: nn.Module):
    """The first `transformers` config (an object with a `model_type`) found in `model`, past
    composite ones (CLIP's, with `sub_configs`) to the one of the sub-model that has the blocks."""
    configs = [getattr(module, "config", None) for module in model.modules()]
    configs = [config for config in configs if getattr(config, "model_type", None)]
    plain = [config for config in configs if not getattr(config, "sub_configs", None)]
    return (plain or configs or [None])[0]


def join_path(block: str, relative: str | None) -> str | None:
    return None if relative is None else f"{block}.{relative}" if relative else block


def block_layouts(
    model: nn.Module, family: Family, modules: Mapping[str, nn.Module] | None = None
) -> list[BlockLayout]:
    """Resolve `family` on every block of `model`.

    Args:
        model: a model of the family (adapted or not, masked or compacted).
        family: its description.
        modules: `dict(model.named_modules())`, where the caller has it already.

    Returns:
        One layout per block, in module order.

    Raises:
        ConfigError: if no block matches, or a described path or attribute is missing (the
            message names the family, block and path).
    """
    pattern = re.compile(family.blocks)
    modules = dict(model.named_modules()) if modules is None else modules
    blocks = [name for name in modules if name and pattern.search(name)]
    if not blocks:
        raise ConfigError(
            f"model family {family.name!r}: no module path matches the block pattern "
            f"{family.blocks!r}; the model does not have the described structure"
        )
    attention, ffn = family.attention, family.ffn
    layouts = []
    for block in blocks:
        paths = {
            "attention": join_path(block, attention.module),
            "query": join_path(block, attention.query),
            "key": join_path(block, attention.key),
            "value": join_path(block, attention.value),
            "qkv": join_path(block, attention.qkv),
            "output": join_path(block, attention.output),
        }
        ffns = [
            fields
            for description in (ffn, *family.extra_ffns)
            for fields in _ffn_paths(block, description, modules, family)
        ]
        inputs = tuple(path for fields in ffns for path in (*fields["ffn_inputs"], fields["ffn"]))
        head_norms = tuple(
            path for p in attention.head_norms if (path := join_path(block, p)) in modules
        )
        ffn_paths = [f["ffn_output"] for f in ffns] + [f["ffn_activation"] for f in ffns]
        for path in [p for p in [*paths.values(), *ffn_paths] if p is not None] + list(inputs):
            if path not in modules:
                raise ConfigError(
                    f"model family {family.name!r}: block {block!r} has no module {path!r}; "
                    "the model does not match its family description"
                )
        holder = modules[paths["attention"]]
        head_dim = getattr(holder, attention.head_dim, None)
        if not isinstance(head_dim, int) or head_dim < 1:
            raise ConfigError(
                f"model family {family.name!r}: {paths['attention']}.{attention.head_dim} "
                f"should hold the head dimension (a positive int), got {head_dim!r}"
            )
        for path in head_norms:
            _check_head_norm(family, path, modules[path], head_dim)
        per_head = tuple(
            (_per_head_tensor(model, family, block, relative, axis), axis)
            for relative, axis in attention.per_head.items()
        ) + tuple(
            (_per_head_tensor(model, family, block, relative, axis), axis)
            for relative, axis in attention.optional_per_head.items()
            if tensor_at(model, join_path(block, relative)) is not None
        )
        per_kv_head = tuple(
            (_per_head_tensor(model, family, block, relative, axis), axis)
            for relative, axis in attention.per_kv_head.items()
        )
        joint_norms = tuple(
            (join_path(block, relative), which) for relative, which in attention.joint_norms.items()
        )
        for path, which in joint_norms:
            _check_joint_norm(family, path, modules.get(path), modules[paths[which]])
        layout = BlockLayout(
            path=block,
            head_dim=head_dim,
            per_head=per_head,
            per_kv_head=per_kv_head,
            qkv_layout=attention.qkv_layout,
            kv_groups=_kv_groups(family, paths["attention"], holder),
            head_norms=head_norms,
            joint_norms=joint_norms,
            **paths,
            **ffns[0],
        )
        more = tuple(dataclasses.replace(layout, **fields) for fields in ffns[1:])
        layouts.append(dataclasses.replace(layout, more_ffns=more))
    return layouts


def _check_head_norm(family: Family, path: str, norm: nn.Module, head_dim: int) -> None:
    """A per-head norm must normalise one head's channels (a weight of `head_dim`, or none)."""
    weight = getattr(norm, "weight", None)
    if weight is not None and tuple(weight.shape) != (head_dim,):
        raise ConfigError(
            f"model family {family.name!r}: {path} normalises {weight.shape[-1]} channels, not one "
            f"head's {head_dim}: a norm over several heads together does not fit the family"
        )


def _check_joint_norm(
    family: Family, path: str, norm: nn.Module | None, projection: nn.Module
) -> None:
    """A joint norm must exist and normalise as many channels as its projection has rows."""
    rows = out_features(getattr(projection, "base", projection))
    weight = getattr(norm, "weight", None)
    if norm is None or weight is None or tuple(weight.shape) != (rows,):
        found = "missing" if norm is None else f"{type(norm).__name__} {_shape(weight)}"
        raise ConfigError(
            f"model family {family.name!r}: {path} should be a norm over the {rows} rows of "
            f"its projection (all heads together), found {found}"
        )


def _shape(tensor: torch.Tensor | None) -> str:
    return "without a weight" if tensor is None else f"of {tuple(tensor.shape)} channels"


def _kv_groups(family: Family, path: str, holder: nn.Module) -> int:
    """Query heads per key/value head where the description names them, else 1."""
    spec = family.attention.kv_groups
    if spec is None:
        return 1
    names = (spec,) if isinstance(spec, str) else spec
    values = [getattr(holder, name, None) for name in names]
    if not all(isinstance(v, int) and v > 0 for v in values) or values[0] % values[-1]:
        raise ConfigError(
            f"model family {family.name!r}: {path}.{'/'.join(names)} should give the query "
            f"heads per key/value head (positive ints), got {values!r}"
        )
    return values[0] // values[-1] if len(values) == 2 else values[0]


def tensor_at(model: nn.Module, path: str) -> torch.Tensor | None:
    """The parameter or buffer at the dotted `path` of `model`, or None if there is none."""
    owner_path, _, name = path.rpartition(".")
    try:
        owner = model.get_submodule(owner_path)
    except AttributeError:
        return None
    return owner._parameters.get(name, owner._buffers.get(name))


def _per_head_tensor(model: nn.Module, family: Family, block: str, relative: str, axis: int) -> str:
    """The full path of a described per-head tensor, checked to exist and to have `axis`."""
    path = join_path(block, relative)
    tensor = tensor_at(model, path)
    if tensor is None or axis >= tensor.dim():
        found = "missing" if tensor is None else f"of shape {tuple(tensor.shape)}"
        raise ConfigError(
            f"model family {family.name!r}: block {block!r} has no tensor {path!r} with a head "
            f"axis {axis} (it is {found}); the model does not match its family description"
        )
    return path
