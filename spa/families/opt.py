"""OPT: q/k/v/out projections, the FFN (`fc1` -> `fc2`) directly on the block, LayerNorms,
learned position embeddings."""

from spa.families.description import (
    FAMILIES,
    AttentionDescription,
    Example,
    Family,
    FeedForwardDescription,
    StreamDescription,
)
from spa.families.tiny import BLOCKS, TOKENS

OPT = FAMILIES.register("opt")(
    Family(
        name="opt",
        blocks=r"(^|\.)layers\.\d+$",
        attention=AttentionDescription(
            module="self_attn",
            head_dim="head_dim",
            query="self_attn.q_proj",
            key="self_attn.k_proj",
            value="self_attn.v_proj",
            output="self_attn.out_proj",
            # XGLM's attention (OPT's layout) reshapes its output by `embed_dim`.
            attributes={"num_heads": "heads", "embed_dim": "width"},
        ),
        ffn=FeedForwardDescription(
            module="", inputs=("fc1",), output="fc2", activation="activation_fn"
        ),
        config_intermediate="ffn_dim",
        config_head_dim=None,  # OPTAttention derives it as hidden_size / heads
        config_hidden_also=("word_embed_proj_dim",),  # the embeddings' width
        stream=StreamDescription(
            block_norms=("self_attn_layer_norm", "final_layer_norm"),
            norms=(r"(^|\.)decoder\.final_layer_norm$",),
            tensors={r"(^|\.)embed_(tokens|positions)\.weight$": 1},
        ),
        examples=(
            Example(
                model="OPTForCausalLM",
                config="OPTConfig",
                kind="decoder",
                options={
                    **BLOCKS,
                    "ffn_dim": 64,
                    "word_embed_proj_dim": 32,
                    **TOKENS,
                    "pad_token_id": 1,
                },
            ),
        ),
    )
)
