"""Llama family (Llama, Mistral, Qwen2): GQA q/k/v/o projections, SwiGLU gate/up/down, RMSNorm."""

from spa.families.description import (
    FAMILIES,
    AttentionDescription,
    Family,
    FeedForwardDescription,
    StreamDescription,
)

LLAMA = FAMILIES.register("llama")(
    Family(
        name="llama",
        model_types=("llama", "mistral", "qwen2"),
        blocks=r"(^|\.)layers\.\d+$",
        attention=AttentionDescription(
            module="self_attn",
            head_dim="head_dim",
            query="self_attn.q_proj",
            key="self_attn.k_proj",
            value="self_attn.v_proj",
            output="self_attn.o_proj",
            attributes={"num_key_value_groups": "kv_groups"},
        ),
        ffn=FeedForwardDescription(
            module="mlp",
            inputs=("mlp.gate_proj", "mlp.up_proj"),
            output="mlp.down_proj",
            activation="mlp.act_fn",
            attributes={"intermediate_size": "neurons"},
        ),
        config_kv_heads="num_key_value_heads",
        config_head_dim="head_dim",  # Llama, Mistral and Qwen2 read `config.head_dim`
        stream=StreamDescription(
            block_norms=("input_layernorm", "post_attention_layernorm"),
            norms=(r"(^|\.)norm$",),
            tensors={r"(^|\.)embed_tokens\.weight$": 1},
        ),
    )
)
