"""The `Family` dataclasses, the `FAMILIES` registry, `describe` and block layouts."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import torch
from torch import nn

from spa._registry import Registry
from spa.errors import ConfigError

# What a module attribute that depends on the pruned structure holds (see `sync_attributes`):
# "heads" query heads, "kv_heads" key/value heads, "width" heads * head_dim, "kv_groups" query
# heads per key/value head, "neurons" FFN width.
Quantity = Literal["heads", "kv_heads", "width", "kv_groups", "neurons"]

FAMILIES: Registry[Family] = Registry("model family")


def _frozen(mapping: Mapping[str, Quantity]) -> MappingProxyType:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, kw_only=True)
class AttentionDescription:
    """Where a block's attention projections live (paths relative to the block).

    Args:
        module: the module holding the head attributes (read at forward time).
        head_dim: attribute of `module` holding the head dimension.
        query: query projection (rows: heads x head_dim), or None with `qkv`.
        key: key projection (rows: key/value heads x head_dim), or None with `qkv`.
        value: value projection, or None with `qkv`.
        qkv: one fused projection whose rows are `[query | key | value]` (GPT-2's `c_attn`).
        output: output projection (columns: heads x head_dim).
        attributes: attributes of `module` to update when heads are removed.
        per_head: other tensors with one slice per query head (path of a parameter or buffer
            -> its head axis), sliced with their heads, e.g. Swin's relative position bias
            table `{"attention.relative_position_bias.relative_position_bias_table": 1}`.
    """

    module: str
    head_dim: str
    output: str
    query: str | None = None
    key: str | None = None
    value: str | None = None
    qkv: str | None = None
    attributes: Mapping[str, Quantity] = field(default_factory=dict)
    per_head: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        separate = (self.query, self.key, self.value)
        if (self.qkv is None) == (None in separate) or (self.qkv and any(separate)):
            raise ConfigError(
                "AttentionDescription: give either query, key and value or one fused qkv, got "
                f"query={self.query!r}, key={self.key!r}, value={self.value!r}, qkv={self.qkv!r}"
            )
        for path, axis in self.per_head.items():
            if not isinstance(axis, int) or isinstance(axis, bool) or axis < 0:
                raise ConfigError(
                    f"AttentionDescription: per_head[{path!r}] must be a non-negative axis, "
                    f"got {axis!r}"
                )
        object.__setattr__(self, "attributes", _frozen(self.attributes))
        object.__setattr__(self, "per_head", MappingProxyType(dict(self.per_head)))


@dataclass(frozen=True, kw_only=True)
class FeedForwardDescription:
    """Where a block's feed-forward projections live (paths relative to the block).

    Args:
        module: the feed-forward module (holder of `attributes`).
        inputs: projections whose output rows are the neurons (up, and gate for gated FFNs).
        output: projection whose input columns are the neurons (down).
        activation: the activation module (used to fold constant neurons into a bias).
        attributes: attributes of `module` to update when neurons are removed.
    """

    module: str
    inputs: tuple[str, ...]
    output: str
    activation: str | None = None
    attributes: Mapping[str, Quantity] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ConfigError("FeedForwardDescription: inputs must name at least one projection")
        object.__setattr__(self, "attributes", _frozen(self.attributes))


@dataclass(frozen=True, kw_only=True)
class MergeDescription:
    """A patch merge between two stages: `parts` neighbouring tokens concatenated (each the
    stage's width), normalised, and reduced to the next stage's width.

    Args:
        norm: regex of the merges' norms (one per stage boundary, in stage order).
        reduction: regex of their reduction projections.
        parts: tokens concatenated (4 for 2 x 2 patch merging).
    """

    norm: str
    reduction: str
    parts: int


@dataclass(frozen=True, kw_only=True)
class StreamDescription:
    """Where a family's residual stream is read and written besides the block projections.

    Regular expressions are searched in full dotted paths, so they match whatever wraps the
    `transformers` model.

    Args:
        block_norms: norms inside each block that normalise the stream (paths relative to it).
        norms: model-level norms of the stream (the embeddings' norm, the final norm).
        tensors: bare parameters with one stream axis (regex -> axis): token, position and type
            embeddings, class and mask tokens.
        writers: model-level layers whose output rows are the stream (a patch projection).
        pooler: the projection that reads the stream for the task head (BERT's pooler,
            RoBERTa's and ELECTRA's classification-head `dense`); in a model without one, the
            task head itself reads the stream.
        stages: for models whose width changes between stages, a regex whose first group,
            searched in a block's path, names the block's stage (one stream per stage).
        merging: the patch merges between stages (Swin).
    """

    block_norms: tuple[str, ...]
    norms: tuple[str, ...] = ()
    tensors: Mapping[str, int] = field(default_factory=dict)
    writers: tuple[str, ...] = ()
    pooler: str | None = None
    stages: str | None = None
    merging: MergeDescription | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tensors", MappingProxyType(dict(self.tensors)))


@dataclass(frozen=True, kw_only=True)
class Family:
    """A model family: which configs it covers and where its blocks' units live.

    Args:
        name: registry name.
        model_types: `config.model_type` values of the `transformers` models it describes.
        blocks: regular expression matching the full dotted path of every transformer block.
        attention: the attention projections of a block.
        ffn: the feed-forward projections of a block.
        config_heads: config attribute with the number of query heads.
        config_kv_heads: config attribute with the number of key/value heads (GQA), if any.
        config_intermediate: config attribute with the FFN width (None: 4 x hidden).
        config_head_dim: config attribute the modelling code reads the head dimension from;
            None where it derives it as hidden size / heads, so a config of the family cannot
            express removed heads (see `spa.families.pretrained`).
        config_hidden: config attribute with the hidden size.
        stream: where the residual stream is read and written besides the block projections;
            None where the hidden size cannot be pruned.
    """

    name: str
    model_types: tuple[str, ...]
    blocks: str
    attention: AttentionDescription
    ffn: FeedForwardDescription
    config_heads: str = "num_attention_heads"
    config_kv_heads: str | None = None
    config_intermediate: str | None = "intermediate_size"
    config_head_dim: str | None = None
    config_hidden: str = "hidden_size"
    stream: StreamDescription | None = None


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


def config_of(model: nn.Module):
    """The first `transformers` config (an object with a `model_type`) found in `model`."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if getattr(config, "model_type", None):
            return config
    return None


def describe(model: nn.Module) -> Family | None:
    """The registered family of `model` (matched by its `transformers` config), or None.

    Args:
        model: a `transformers` model, possibly wrapped or adapted.

    Returns:
        The family, or None if the model has no config or its `model_type` is not described.
    """
    config = config_of(model)
    if config is None:
        return None
    for name in FAMILIES:
        family = FAMILIES.get(name)
        if config.model_type in family.model_types:
            return family
    return None


def join_path(block: str, relative: str | None) -> str | None:
    return None if relative is None else f"{block}.{relative}" if relative else block


def block_layouts(model: nn.Module, family: Family) -> list[BlockLayout]:
    """Resolve `family` on every block of `model`.

    Args:
        model: a model of the family (adapted or not, masked or compacted).
        family: its description.

    Returns:
        One layout per block, in module order.

    Raises:
        ConfigError: if no block matches, or a described path or attribute is missing (the
            message names the family, block and path).
    """
    pattern = re.compile(family.blocks)
    modules = dict(model.named_modules())
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
            "ffn": join_path(block, ffn.module),
            "ffn_output": join_path(block, ffn.output),
            "ffn_activation": join_path(block, ffn.activation),
        }
        inputs = tuple(join_path(block, p) for p in ffn.inputs)
        for path in [p for p in paths.values() if p is not None] + list(inputs):
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
        per_head = tuple(
            (_per_head_tensor(model, family, block, relative, axis), axis)
            for relative, axis in attention.per_head.items()
        )
        layouts.append(
            BlockLayout(
                path=block, head_dim=head_dim, ffn_inputs=inputs, per_head=per_head, **paths
            )
        )
    return layouts


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


def per_head_axes(model: nn.Module) -> dict[str, int]:
    """Every described per-head tensor of `model` (full dotted path -> head axis).

    Empty for a model of no described family or a family without per-head tensors.
    """
    family = describe(model)
    if family is None or not family.attention.per_head:
        return {}
    return {path: axis for layout in block_layouts(model, family) for path, axis in layout.per_head}
