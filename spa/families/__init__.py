"""Model-family descriptions: where a transformer's heads and FFN neurons live, as data.

A `Family` names, for one architecture family, the block pattern and the projections of its
attention and feed-forward sub-layers (paths relative to a block), the attribute that holds the
head dimension and the module attributes that depend on the head / neuron counts. Generic code
(`spa.pruning.units`, `sync_attributes`) reads a description and never names a family's paths.
Families register in `FAMILIES` (one small module each) and `describe(model)` finds the family of
a model by its `transformers` config (`config.model_type`).
"""

from __future__ import annotations

from spa.families import bert, gpt2, llama, swin, vit  # noqa: E402,F401  (registrations)
from spa.families.description import (
    FAMILIES,
    AttentionDescription,
    BlockLayout,
    Family,
    FeedForwardDescription,
    MergeDescription,
    StreamDescription,
    block_layouts,
    config_of,
    describe,
    per_head_axes,
)
from spa.families.pretrained import config_values
from spa.families.stream import StreamLayout, sliced_tensor_axes, stream_layouts, stream_tensors
from spa.families.sync import head_counts, sync_attributes

__all__ = [
    "FAMILIES",
    "AttentionDescription",
    "BlockLayout",
    "Family",
    "FeedForwardDescription",
    "MergeDescription",
    "StreamDescription",
    "StreamLayout",
    "block_layouts",
    "config_of",
    "config_values",
    "describe",
    "head_counts",
    "per_head_axes",
    "sliced_tensor_axes",
    "stream_layouts",
    "stream_tensors",
    "sync_attributes",
]
