"""Swin family: windowed attention with a per-head relative position bias table, fc1/fc2 MLP.

Stages have their own width and head count (`config.num_heads` is a list, the FFN width is
`mlp_ratio` x the stage width). Each stage's hidden size is a residual stream of its own: the
patch merge after a stage reads it four times side by side (2 x 2 neighbouring tokens
concatenated, then normalised) and its reduction writes the next stage's. Each block's
`relative_position_bias_table` ((2w-1)^2 relative positions x heads) holds one column per head
and is sliced with its head.
"""

import dataclasses

from spa.families.description import (
    FAMILIES,
    Example,
    Family,
    MergeDescription,
    StreamDescription,
)
from spa.families.vit import VIT

SWIN = FAMILIES.register("swin")(
    Family(
        name="swin",
        blocks=r"(^|\.)blocks\.\d+$",
        # ViT's attention and MLP modules, with a per-head bias table.
        attention=dataclasses.replace(
            VIT.attention,
            per_head={"attention.relative_position_bias.relative_position_bias_table": 1},
        ),
        ffn=VIT.ffn,
        config_heads="num_heads",  # a list: one count per stage
        config_intermediate=None,  # derived: mlp_ratio x the stage width
        config_head_dim=None,  # SwinAttention derives it as stage width / heads
        stream=StreamDescription(
            block_norms=("layernorm_before", "layernorm_after"),
            norms=(r"(^|\.)embeddings\.norm$", r"(^|\.)layernorm$"),
            tensors={r"(^|\.)embeddings\.(mask_token|position_embeddings)$": 2},
            writers=(r"(^|\.)patch_embeddings\.projection$",),
            stages=r"(?:^|\.)layers\.(\d+)\.blocks\.\d+$",
            merging=MergeDescription(
                norm=r"(^|\.)downsample\.norm$", reduction=r"(^|\.)downsample\.reduction$", parts=4
            ),
        ),
        examples=(
            Example(
                model="SwinForImageClassification",
                config="SwinConfig",
                kind="image",
                options={
                    "image_size": 32,
                    "patch_size": 4,
                    "embed_dim": 16,
                    "depths": [2, 2],
                    "num_heads": [2, 4],
                    "window_size": 2,
                    "num_labels": 3,
                },
            ),
        ),
    )
)
