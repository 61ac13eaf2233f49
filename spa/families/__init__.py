"""Model-family descriptions: where a transformer's heads and FFN neurons live, as data.

A `Family` names, for one architecture family, the block pattern and the projections of its
attention and feed-forward sub-layers (paths relative to a block), the attribute that holds the
head dimension, how fused projections order their rows and the module attributes that depend
on the head / neuron counts. Generic code (`spa.pruning.units`, `sync_attributes`) reads a
description and never names a family's paths. Families register in `FAMILIES` (one small module
each) and `describe(model)` finds the family whose structure a model has (`spa.families.match`),
whatever its `model_type`. `spa.families.rows` is the one resolver of row layouts.
"""

from __future__ import annotations

from spa.families import (  # noqa: E402,F401  (registrations)
    beit,
    bert,
    bloom,
    clip,
    cohere,
    dinov2,
    falcon,
    gpt2,
    gpt_neox,
    gptj,
    llama,
    llama_ffn,
    modernbert,
    moe,
    olmo2,
    opt,
    phi,
    phi3,
    swin,
    t5,
    vit,
)
from spa.families.description import (
    FAMILIES,
    AttentionDescription,
    Example,
    Family,
    FeedForwardDescription,
    MergeDescription,
    StreamDescription,
)
from spa.families.experts import SplitExperts, split_experts
from spa.families.layouts import BlockLayout, block_layouts, config_of, ffn_layouts
from spa.families.match import describe, explain, mismatches, per_head_axes
from spa.families.pretrained import config_values, pretrained_round_to
from spa.families.rows import HeadRows, ffn_neurons, head_rows, module_rows, neuron_rows
from spa.families.stream import StreamLayout, sliced_tensor_axes, stream_layouts, stream_tensors
from spa.families.sync import head_counts, sync_attributes

__all__ = [
    "FAMILIES",
    "AttentionDescription",
    "BlockLayout",
    "Example",
    "Family",
    "FeedForwardDescription",
    "HeadRows",
    "MergeDescription",
    "StreamDescription",
    "StreamLayout",
    "block_layouts",
    "config_of",
    "config_values",
    "ffn_layouts",
    "describe",
    "explain",
    "ffn_neurons",
    "head_counts",
    "head_rows",
    "mismatches",
    "module_rows",
    "neuron_rows",
    "per_head_axes",
    "pretrained_round_to",
    "SplitExperts",
    "sliced_tensor_axes",
    "split_experts",
    "stream_layouts",
    "stream_tensors",
    "sync_attributes",
]
