"""DINOv2: the ViT family's attention and MLP in blocks under `encoder.layer`, pre-norms `norm1`
/ `norm2`, and layer scales `layer_scale1/2.lambda1` (one value per hidden channel, on the
residual stream). Its classification head reads the class token and the mean patch token side
by side (`2 x hidden` input columns), which the stream description does not slice: with the
head, heads and FFN neurons prune; the bare backbone (`Dinov2Model`) also prunes its hidden size.
"""

import dataclasses

from spa.families.description import FAMILIES, Example, StreamDescription
from spa.families.tiny import IMAGE
from spa.families.vit import VIT

DINOV2 = FAMILIES.register("dinov2")(
    dataclasses.replace(
        VIT,
        name="dinov2",
        blocks=r"(^|\.)encoder\.layer\.\d+$",
        config_head_dim=None,  # Dinov2Attention derives it as hidden / heads without one
        stream=StreamDescription(
            block_norms=("norm1", "norm2"),
            norms=(r"(^|\.)layernorm$",),
            tensors={
                r"(^|\.)embeddings\.(cls_token|register_tokens|position_embeddings)$": 2,
                r"(^|\.)embeddings\.mask_token$": 1,
                r"(^|\.)layer_scale[12]\.lambda1$": 0,
            },
            writers=(r"(^|\.)patch_embeddings\.projection$",),
            unsliced={
                r"(^|\.)classifier$": "the class and mean patch tokens side by side, 2 x hidden"
            },
        ),
        examples=(
            Example(
                model="Dinov2ForImageClassification",
                config="Dinov2Config",
                kind="image",
                options={**IMAGE, "mlp_ratio": 2},
            ),
        ),
    )
)
