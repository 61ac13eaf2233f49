"""Swin family: windowed attention with a per-head relative position bias table, fc1/fc2 MLP.

Stages have their own width and head count (`config.num_heads` is a list, the FFN width is
`mlp_ratio` x the stage width); patch merging between stages changes the hidden size and is
never pruned. Each block's `relative_position_bias_table` ((2w-1)^2 relative positions x heads)
holds one column per head and is sliced with its head.
"""

from spa.families.description import (
    FAMILIES,
    AttentionDescription,
    Family,
    FeedForwardDescription,
)

SWIN = FAMILIES.register("swin")(
    Family(
        name="swin",
        model_types=("swin",),
        blocks=r"(^|\.)blocks\.\d+$",
        attention=AttentionDescription(
            module="attention",
            head_dim="head_dim",
            query="attention.q_proj",
            key="attention.k_proj",
            value="attention.v_proj",
            output="attention.o_proj",
            attributes={"num_attention_heads": "heads"},
            per_head={"attention.relative_position_bias.relative_position_bias_table": 1},
        ),
        ffn=FeedForwardDescription(
            module="mlp", inputs=("mlp.fc1",), output="mlp.fc2", activation="mlp.activation_fn"
        ),
        config_heads="num_heads",  # a list: one count per stage
        config_intermediate=None,  # derived: mlp_ratio x the stage width
        config_head_dim=None,  # SwinAttention derives it as stage width / heads
    )
)
