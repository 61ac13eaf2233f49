"""Llama-like decoders: GQA q/k/v/o projections, SwiGLU gate/up/down, RMS or LayerNorms.

Matched by structure, so every decoder with this layout is of the family whatever its
`model_type`: Llama, Mistral, Qwen2, Qwen3 (per-head q/k norms), Gemma, Gemma2 (four norms per
block), Gemma3 (both), Granite, OLMo, StableLM (without per-head norm layers), Helium,
SmolLM3, ... `head_dim` is read from the attention module, so it may differ from hidden size /
heads (Gemma). A q/k norm normalises each head's `head_dim` channels with one weight shared by
all heads, so removing a head leaves it unchanged.
"""

from spa.families.description import (
    FAMILIES,
    AttentionDescription,
    Example,
    Family,
    FeedForwardDescription,
    StreamDescription,
)
from spa.families.tiny import DECODER

_GEMMA = {"head_dim": 16, "query_pre_attn_scalar": 16}  # head_dim != hidden / heads

LLAMA = FAMILIES.register("llama")(
    Family(
        name="llama",
        blocks=r"(^|\.)layers\.\d+$",
        attention=AttentionDescription(
            module="self_attn",
            head_dim="head_dim",
            query="self_attn.q_proj",
            key="self_attn.k_proj",
            value="self_attn.v_proj",
            output="self_attn.o_proj",
            # StableLM's attention reads its own head counts; the others only the groups.
            attributes={
                "num_key_value_groups": "kv_groups",
                "num_heads": "heads",
                "num_key_value_heads": "kv_heads",
            },
            # Qwen3's and Gemma3's q/k norms; HunYuan's are `query_layernorm` / `key_layernorm`.
            head_norms=(
                "self_attn.q_norm",
                "self_attn.k_norm",
                "self_attn.query_layernorm",
                "self_attn.key_layernorm",
            ),
        ),
        ffn=FeedForwardDescription(
            module="mlp",
            inputs=("mlp.gate_proj", "mlp.up_proj"),
            output="mlp.down_proj",
            activation="mlp.act_fn",
            attributes={"intermediate_size": "neurons"},
        ),
        config_kv_heads="num_key_value_heads",
        config_head_dim="head_dim",  # the Llama-like attentions read `config.head_dim`
        stream=StreamDescription(
            block_norms=("input_layernorm", "post_attention_layernorm"),
            optional_block_norms=("pre_feedforward_layernorm", "post_feedforward_layernorm"),
            norms=(r"(^|\.)norm$",),
            tensors={r"(^|\.)embed_tokens\.weight$": 1},
        ),
        examples=(
            Example(
                model="LlamaForCausalLM",
                config="LlamaConfig",
                kind="decoder",
                options={**DECODER, "tie_word_embeddings": True},
            ),
            Example(
                model="Qwen3ForCausalLM",
                config="Qwen3Config",
                kind="decoder",
                options=DECODER,
                name="qwen3",
            ),
            Example(
                model="Gemma2ForCausalLM",
                config="Gemma2Config",
                kind="decoder",
                options={**DECODER, **_GEMMA},
                name="gemma2",
            ),
            Example(
                model="Gemma3ForCausalLM",
                config="Gemma3TextConfig",
                kind="decoder",
                options={**DECODER, **_GEMMA},
                name="gemma3",
            ),
        ),
    )
)
