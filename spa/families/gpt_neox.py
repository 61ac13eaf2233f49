"""GPT-NeoX (Pythia): one fused `query_key_value` whose rows are interleaved per head
(`[q_h | k_h | v_h]` for each head `h`), a dense FFN, LayerNorms."""

from spa.families.description import (
    FAMILIES,
    AttentionDescription,
    Example,
    Family,
    StreamDescription,
)
from spa.families.parts import dense_4h_ffn
from spa.families.tiny import FEED_FORWARD, TOKENS

GPT_NEOX = FAMILIES.register("gpt_neox")(
    Family(
        name="gpt_neox",
        blocks=r"(^|\.)layers\.\d+$",
        attention=AttentionDescription(
            module="attention",
            head_dim="head_size",
            qkv="attention.query_key_value",
            qkv_layout="grouped",
            output="attention.dense",
        ),
        ffn=dense_4h_ffn("mlp.act"),
        config_head_dim=None,  # GPTNeoXAttention derives it as hidden_size / heads
        stream=StreamDescription(
            block_norms=("input_layernorm", "post_attention_layernorm"),
            norms=(r"(^|\.)final_layer_norm$",),
            tensors={r"(^|\.)embed_in\.weight$": 1},
        ),
        examples=(
            Example(
                model="GPTNeoXForCausalLM",
                config="GPTNeoXConfig",
                kind="decoder",
                options={**FEED_FORWARD, **TOKENS},
            ),
        ),
    )
)
