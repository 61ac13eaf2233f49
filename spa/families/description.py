"""The `Family` dataclasses and the `FAMILIES` registry (see `match` and `layouts`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from spa._registry import Registry
from spa.errors import ConfigError

# What a module attribute that depends on the pruned structure holds (see `sync_attributes`):
# "heads" query heads, "kv_heads" key/value heads, "width" heads * head_dim, "kv_groups" query
# heads per key/value head, "neurons" FFN width, "hidden" the block's stream width.
Quantity = Literal["heads", "kv_heads", "width", "kv_groups", "neurons", "hidden"]

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
        qkv_layout: how `qkv` orders its rows (see `spa.families.rows`): "blocked" is
            `[all queries | all keys | all values]` (GPT-2, Phi-3, ModernBERT); "grouped" is,
            per key/value head, `[its query heads | key | value]` (GPT-NeoX and BLOOM with
            one query head each, Falcon).
        kv_groups: attribute of `module` with the query heads per key/value head, needed for a
            fused `qkv` with grouped-query attention (Phi-3), or a pair of attributes (query
            heads, key/value heads) whose ratio it is (Falcon); None: one. Pruning keeps the
            ratio, so counts not yet synchronised still give it.
        head_norms: norms over one head's `head_dim` channels, shared by all heads (Qwen3's and
            Gemma3's `q_norm` / `k_norm`), where a model has them: untouched by head pruning. A
            norm at such a path over more channels (OLMo2's, over all heads together) does not
            fit the family.
        config_attributes: attributes of `module.config` the module reads at forward time
            (Phi-3 reads `config.num_attention_heads`); compaction gives the module its own
            copy of the config holding its block's counts.
        fixed_heads: why heads cannot be removed in this family (None: they can).
        per_kv_head: tensors with one slice per key/value head (path -> its axis), e.g. Cohere's
            key norm weight `(kv_heads, head_dim)`, sliced with their key/value heads.
        optional_per_head: per-head tensors (like `per_head`) that only some blocks have, e.g.
            T5's relative attention bias, in its first block only.
        tied_heads: why every block must keep the same heads (None: each block its own). T5
            computes its position bias in the first block and passes it to every later one,
            so heads form one unit group across all blocks: group channel `j` is key/value
            head `j` of every block.
        joint_norms: norms over all query (or key) heads together (path -> "query" or
            "key"), channel for channel with that projection's rows (OLMo2's `q_norm` /
            `k_norm`): their channels go with their heads, and a masked one normalises over
            the kept channels only, as the compacted one does.
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
    qkv_layout: Literal["blocked", "grouped"] = "blocked"
    kv_groups: str | tuple[str, str] | None = None
    head_norms: tuple[str, ...] = ()
    config_attributes: Mapping[str, Quantity] = field(default_factory=dict)
    fixed_heads: str | None = None
    per_kv_head: Mapping[str, int] = field(default_factory=dict)
    optional_per_head: Mapping[str, int] = field(default_factory=dict)
    tied_heads: str | None = None
    joint_norms: Mapping[str, Literal["query", "key"]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.qkv_layout not in ("blocked", "grouped"):
            raise ConfigError(
                f"AttentionDescription: qkv_layout must be 'blocked' or 'grouped', got "
                f"{self.qkv_layout!r}"
            )
        separate = (self.query, self.key, self.value)
        if (self.qkv is None) == (None in separate) or (self.qkv and any(separate)):
            raise ConfigError(
                "AttentionDescription: give either query, key and value or one fused qkv, got "
                f"query={self.query!r}, key={self.key!r}, value={self.value!r}, qkv={self.qkv!r}"
            )
        for path, axis in {**self.per_head, **self.per_kv_head, **self.optional_per_head}.items():
            if not isinstance(axis, int) or isinstance(axis, bool) or axis < 0:
                raise ConfigError(
                    f"AttentionDescription: per_head[{path!r}] must be a non-negative axis, "
                    f"got {axis!r}"
                )
        for path, which in self.joint_norms.items():
            if which not in ("query", "key") or self.qkv is not None:
                raise ConfigError(
                    f"AttentionDescription: joint_norms[{path!r}] must be 'query' or 'key' of "
                    f"separate q/k/v projections, got {which!r}"
                )
        object.__setattr__(self, "attributes", _frozen(self.attributes))
        object.__setattr__(self, "config_attributes", _frozen(self.config_attributes))
        object.__setattr__(self, "per_head", MappingProxyType(dict(self.per_head)))
        object.__setattr__(self, "per_kv_head", MappingProxyType(dict(self.per_kv_head)))
        optional = MappingProxyType(dict(self.optional_per_head))
        object.__setattr__(self, "optional_per_head", optional)
        object.__setattr__(self, "joint_norms", MappingProxyType(dict(self.joint_norms)))


@dataclass(frozen=True, kw_only=True)
class FeedForwardDescription:
    """Where a block's feed-forward projections live (paths relative to the block).

    Args:
        module: the feed-forward module (holder of `attributes`).
        inputs: projections whose output rows are the neurons (up, and gate for gated FFNs).
        output: projection whose input columns are the neurons (down).
        activation: the activation module (used to fold constant neurons into a bias).
        attributes: attributes of `module` to update when neurons are removed.
        chunks: equal parts each input's rows hold side by side, one row per neuron in each
            (2 for a fused `[gate | up]` projection: Phi-3's `gate_up_proj`, ModernBERT's `Wi`).
        experts: attribute of `module` with its number of experts, for a mixture of experts
            (`spa.families.experts.SplitExperts`): `inputs` and `output` then name expert
            `{expert}`'s projections, and each expert is one FFN of the block.
        config_width: config attribute with this FFN's width, for a `Family.extra_ffns` entry
            (Qwen2-MoE's `shared_expert_intermediate_size`); the main FFN's is
            `Family.config_intermediate`. None: `spa.save_pretrained` does not write it.
    """

    module: str
    inputs: tuple[str, ...]
    output: str
    activation: str | None = None
    attributes: Mapping[str, Quantity] = field(default_factory=dict)
    chunks: int = 1
    experts: str | None = None
    config_width: str | None = None

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ConfigError("FeedForwardDescription: inputs must name at least one projection")
        if not isinstance(self.chunks, int) or self.chunks < 1:
            raise ConfigError(f"FeedForwardDescription: chunks must be >= 1, got {self.chunks!r}")
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
        optional_block_norms: further block norms on the stream that some models of the family
            have (Gemma2's and Gemma3's `pre_feedforward_layernorm`, ...).
        norms: model-level norms of the stream (the embeddings' norm, the final norm).
        tensors: bare parameters with one stream axis (regex -> axis): token, position and type
            embeddings, class and mask tokens.
        writers: model-level layers whose output rows are the stream (a patch projection).
        pooler: the projection that reads the stream for the task head (BERT's pooler,
            RoBERTa's and ELECTRA's classification-head `dense`); in a model without one, the
            task head itself reads the stream.
        stages: for models with several streams (widths changing between stages, or towers
            side by side), a regex whose first group, searched in a block's path, names the
            block's stage (one stream per stage); a model-level member whose path it matches
            joins that stage, any other the stage of its width.
        stage_readers: model-level layers that read one named stage's stream (regex -> stage
            name): CLIP's `text_projection` and `visual_projection`, one per tower.
        merging: the patch merges between stages (Swin).
        readers: further layers in each block that read the stream (paths relative to the
            block; their input columns are sliced): Qwen2-MoE's `mlp.shared_expert_gate`.
        unsliced: model-level modules that use the stream in a way the description does not
            slice (regex -> what they do): a model with one keeps its hidden size (SigLIP's
            attention-pooling head).
    """

    block_norms: tuple[str, ...]
    optional_block_norms: tuple[str, ...] = ()
    norms: tuple[str, ...] = ()
    tensors: Mapping[str, int] = field(default_factory=dict)
    writers: tuple[str, ...] = ()
    pooler: str | None = None
    stages: str | None = None
    stage_readers: Mapping[str, str] = field(default_factory=dict)
    merging: MergeDescription | None = None
    readers: tuple[str, ...] = ()
    unsliced: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tensors", MappingProxyType(dict(self.tensors)))
        object.__setattr__(self, "unsliced", MappingProxyType(dict(self.unsliced)))
        object.__setattr__(self, "stage_readers", MappingProxyType(dict(self.stage_readers)))


@dataclass(frozen=True, kw_only=True)
class Family:
    """A model family: the structure it recognises and where its blocks' units live.

    A model is of a family when its structure fits the description (`spa.families.describe`):
    every described module and config field exists, every module with parameters inside a
    block is described, and the head counts follow from the shapes; its `model_type` is not
    read.

    Args:
        name: registry name.
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
        config_hidden_also: further config attributes that hold the hidden size where they
            equal it (OPT's `word_embed_proj_dim`); `spa.save_pretrained` sets them with it.
        stream: where the residual stream is read and written besides the block projections;
            None where the hidden size cannot be pruned.
        variant_of: the family this one refines (a model that fits both is of the variant).
        examples: tiny models of the family that the tests build and run end to end.
        extra_ffns: further feed-forward sub-layers of each block, pruned like `ffn`
            (Qwen2-MoE's shared expert next to its routed experts).
        untouched: modules with parameters in a block (paths relative to it) that pruning
            leaves as they are: routers, which read the stream and choose experts, not neurons.
        block_attributes: further modules of a block (paths relative to it) with attributes
            to update from the pruned structure, e.g. a router's `hidden_dim` ("hidden").
    """

    name: str
    blocks: str
    attention: AttentionDescription
    ffn: FeedForwardDescription
    config_heads: str = "num_attention_heads"
    config_kv_heads: str | None = None
    config_intermediate: str | None = "intermediate_size"
    config_head_dim: str | None = None
    config_hidden: str = "hidden_size"
    config_hidden_also: tuple[str, ...] = ()
    stream: StreamDescription | None = None
    variant_of: str | None = None
    examples: tuple[Example, ...] = ()
    extra_ffns: tuple[FeedForwardDescription, ...] = ()
    untouched: tuple[str, ...] = ()
    block_attributes: Mapping[str, Mapping[str, Quantity]] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Example:
    """A tiny random-init `transformers` model of a family (no download): what tests build.

    Args:
        model: `transformers` model class name (e.g. "LlamaForCausalLM").
        config: its config class name.
        kind: "decoder" (causal LM, generates), "encoder" (text classification) or "image".
        options: config keyword arguments besides the shared tiny sizes.
        name: the example's name in test ids and tables (default: the config's model type).
    """

    model: str
    config: str
    kind: Literal["decoder", "encoder", "image"]
    options: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
