"""GPT-NeoX (Pythia) and Persimmon: one fused `query_key_value` interleaved per head
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

# Persimmon (Fuyu's decoder): GPT-NeoX's layouts under Llama-like names, and per-head q/k
# LayerNorms (with biases) shared by all heads.
PERSIMMON = FAMILIES.register("persimmon")(
    Family(
        name="persimmon",
        blocks=r"(^|\.)layers\.\d+$",
        attention=AttentionDescription(
            module="self_attn",
            head_dim="head_dim",
            qkv="self_attn.query_key_value",
            qkv_layout="grouped",
            output="self_attn.dense",
            attributes={"num_heads": "heads"},
            head_norms=("self_attn.q_layernorm", "self_attn.k_layernorm"),
        ),
        ffn=dense_4h_ffn("mlp.act"),
        config_head_dim=None,  # PersimmonAttention derives it as hidden_size / heads
        stream=StreamDescription(
            block_norms=("input_layernorm", "post_attention_layernorm"),
            norms=(r"(^|\.)final_layernorm$",),
            tensors={r"(^|\.)embed_tokens\.weight$": 1},
        ),
        examples=(
            Example(
                model="PersimmonForCausalLM",
                config="PersimmonConfig",
                kind="decoder",
                options={**FEED_FORWARD, **TOKENS, "pad_token_id": 0},
            ),
        ),
    )
)
