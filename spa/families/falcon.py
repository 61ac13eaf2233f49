"""Falcon: one fused `query_key_value` grouped per key/value head (`[its query heads | key |
value]`: the new decoder architecture's grouped-query layout, multi-query as one group of all
heads, or one query head per group), a dense FFN, LayerNorms (one or two per block, or two in
sequence in the old architecture).

With `alibi=True` the heads' position biases follow the head count (as in BLOOM); the default
rotary embeddings do not.
"""

from spa.families.description import (
    FAMILIES,
    AttentionDescription,
    Example,
    Family,
    StreamDescription,
)
from spa.families.parts import dense_4h_ffn
from spa.families.tiny import BLOCKS, VOCABULARY

FALCON = FAMILIES.register("falcon")(
    Family(
        name="falcon",
        blocks=r"(^|\.)h\.\d+$",
        attention=AttentionDescription(
            module="self_attention",
            head_dim="head_dim",
            qkv="self_attention.query_key_value",
            qkv_layout="grouped",
            output="self_attention.dense",
            kv_groups=("num_heads", "num_kv_heads"),
            attributes={"num_heads": "heads", "num_kv_heads": "kv_heads"},
        ),
        ffn=dense_4h_ffn("mlp.act"),
        config_kv_heads="num_kv_heads",
        config_intermediate="ffn_hidden_size",
        config_head_dim=None,  # FalconAttention derives it as hidden_size / heads
        stream=StreamDescription(
            block_norms=(),
            optional_block_norms=(
                "input_layernorm",
                "post_attention_layernorm",
                "ln_attn",
                "ln_mlp",
            ),
            norms=(r"(^|\.)ln_f$",),
            tensors={r"(^|\.)word_embeddings\.weight$": 1},
        ),
        examples=(
            Example(
                model="FalconForCausalLM",
                config="FalconConfig",
                kind="decoder",
                options={
                    **BLOCKS,
                    "num_kv_heads": 2,
                    "new_decoder_architecture": True,
                    "ffn_hidden_size": 64,
                    **VOCABULARY,
                },
            ),
            Example(  # the old architecture's multi-query layout, one norm per block
                model="FalconForCausalLM",
                config="FalconConfig",
                kind="decoder",
                options={**BLOCKS, **VOCABULARY},
                name="falcon-multi-query",
            ),
        ),
    )
)
