"""BEiT: the ViT family's modules plus a per-head relative position bias table in every block
(`use_relative_position_bias`, sliced with its heads) and layer scales `lambda_1` / `lambda_2`
(one value per hidden channel, on the residual stream)."""

import dataclasses

from spa.families.description import FAMILIES, Example, StreamDescription
from spa.families.tiny import IMAGE
from spa.families.vit import VIT

BEIT = FAMILIES.register("beit")(
    dataclasses.replace(
        VIT,
        name="beit",
        variant_of="vit",
        attention=dataclasses.replace(
            VIT.attention,
            per_head={"relative_position_bias.relative_position_bias_table": 1},
        ),
        stream=StreamDescription(
            block_norms=("layernorm_before", "layernorm_after"),
            norms=(r"(^|\.)layernorm$",),
            tensors={
                r"(^|\.)embeddings\.(\w+_token|position_embeddings)$": 2,
                r"(^|\.)layers\.\d+\.lambda_[12]$": 0,
            },
            writers=(r"(^|\.)patch_embeddings\.projection$",),
        ),
        examples=(
            Example(
                model="BeitForImageClassification",
                config="BeitConfig",
                kind="image",
                options={
                    **IMAGE,
                    "use_relative_position_bias": True,
                    "use_mean_pooling": False,
                },
            ),
        ),
    )
)
