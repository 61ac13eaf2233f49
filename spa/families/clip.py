"""CLIP-style encoders (CLIP vision and text, SigLIP vision): `self_attn.{q,k,v,out}_proj`, an
`mlp.fc1` -> `mlp.fc2` FFN and pre-norms `layer_norm1` / `layer_norm2` in `encoder.layers.N`.

The stream is written by the patch convolution (or token embedding) plus learned positions, a
bare class embedding (one value per channel) where the model has one, and normalised by
`pre_layrnorm` (CLIP vision; OWL-ViT's `pre_layernorm`), `post_layernorm` or
`final_layer_norm`. SigLIP's attention-pooling head (`vision_use_head`: an
`nn.MultiheadAttention` probe with a packed `in_proj_weight`, a norm and an MLP of its own) is
not on the described stream: a model with it keeps its hidden size (heads and FFN still prune).
"""

from spa.families.description import (
    FAMILIES,
    AttentionDescription,
    Example,
    Family,
    StreamDescription,
)
from spa.families.tiny import FEED_FORWARD
from spa.families.vit import VIT

# 32x32 three-channel images in 8x8 patches (16 patches), three labels.
_VISION = {**FEED_FORWARD, "image_size": 32, "patch_size": 8, "num_channels": 3}

CLIP = FAMILIES.register("clip")(
    Family(
        name="clip",
        blocks=r"(^|\.)encoder\.layers\.\d+$",
        attention=AttentionDescription(
            module="self_attn",
            head_dim="head_dim",
            query="self_attn.q_proj",
            key="self_attn.k_proj",
            value="self_attn.v_proj",
            output="self_attn.out_proj",
            attributes={"num_heads": "heads"},
        ),
        ffn=VIT.ffn,  # mlp.fc1 -> mlp.activation_fn -> mlp.fc2
        config_head_dim=None,  # CLIPAttention derives it as hidden_size / heads
        stream=StreamDescription(
            block_norms=("layer_norm1", "layer_norm2"),
            norms=(r"(^|\.)(pre_layrnorm|pre_layernorm|post_layernorm|final_layer_norm)$",),
            tensors={
                r"(^|\.)embeddings\.class_embedding$": 0,
                r"(^|\.)embeddings\.(position|token)_embedding\.weight$": 1,
            },
            writers=(r"(^|\.)embeddings\.patch_embedding$",),
            unsliced={r"(^|\.)head\.attention$": "SigLIP's attention-pooling head"},
            # CLIPModel: two towers, each its own stream, read by its own projection.
            stages=r"(?:^|\.)(text_model|vision_model)\.",
            stage_readers={
                r"(^|\.)text_projection$": "text_model",
                r"(^|\.)visual_projection$": "vision_model",
            },
        ),
        examples=(
            Example(
                model="CLIPForImageClassification",
                config="CLIPConfig",
                kind="image",
                options={"vision_config": _VISION, "num_labels": 3},
                name="clip-vision",
            ),
            Example(
                model="SiglipForImageClassification",
                config="SiglipConfig",
                kind="image",
                options={"vision_config": {**_VISION, "vision_use_head": False}, "num_labels": 3},
                name="siglip-vision",
            ),
        ),
    )
)
