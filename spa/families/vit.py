"""ViT family (also DeiT): q/k/v/o projections in one attention module, fc1/fc2 MLP."""

from spa.families.description import (
    FAMILIES,
    AttentionDescription,
    Example,
    Family,
    FeedForwardDescription,
    StreamDescription,
)
from spa.families.tiny import IMAGE

VIT = FAMILIES.register("vit")(
    Family(
        name="vit",
        blocks=r"(^|\.)layers\.\d+$",
        attention=AttentionDescription(
            module="attention",
            head_dim="head_dim",
            query="attention.q_proj",
            key="attention.k_proj",
            value="attention.v_proj",
            output="attention.o_proj",
            attributes={"num_attention_heads": "heads"},
        ),
        ffn=FeedForwardDescription(
            module="mlp", inputs=("mlp.fc1",), output="mlp.fc2", activation="mlp.activation_fn"
        ),
        config_head_dim="head_dim",  # ViTSelfAttention reads `config.head_dim` when present
        stream=StreamDescription(
            block_norms=("layernorm_before", "layernorm_after"),
            norms=(r"(^|\.)layernorm$",),
            # The class token, DeiT's distillation token, the mask token, position embeddings.
            tensors={r"(^|\.)embeddings\.(\w+_token|position_embeddings)$": 2},
            writers=(r"(^|\.)patch_embeddings\.projection$",),
            pooler=r"(^|\.)pooler\.dense$",
        ),
        examples=(
            Example(
                model="ViTForImageClassification",
                config="ViTConfig",
                kind="image",
                options=IMAGE,
            ),
        ),
    )
)
