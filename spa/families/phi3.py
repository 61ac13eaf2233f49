"""Phi-3: one fused `qkv_proj` (rows `[queries | keys | values]`, grouped-query attention) and
one fused `gate_up_proj` (rows `[gate | up]`).

Phi-3's attention reads the number of query heads from the shared config, so compaction gives
each attention module a copy of the config holding its own count.
"""

from spa.families.description import (
    FAMILIES,
    AttentionDescription,
    Example,
    Family,
    StreamDescription,
)
from spa.families.parts import GATE_UP_FFN
from spa.families.tiny import DECODER

PHI3 = FAMILIES.register("phi3")(
    Family(
        name="phi3",
        blocks=r"(^|\.)layers\.\d+$",
        attention=AttentionDescription(
            module="self_attn",
            head_dim="head_dim",
            qkv="self_attn.qkv_proj",
            output="self_attn.o_proj",
            kv_groups="num_key_value_groups",
            attributes={"num_key_value_heads": "kv_heads", "num_key_value_groups": "kv_groups"},
            config_attributes={"num_attention_heads": "heads"},
        ),
        ffn=GATE_UP_FFN,
        config_kv_heads="num_key_value_heads",
        config_head_dim="head_dim",  # Phi3Attention reads `config.head_dim` when present
        stream=StreamDescription(
            block_norms=("input_layernorm", "post_attention_layernorm"),
            norms=(r"(^|\.)norm$",),
            tensors={r"(^|\.)embed_tokens\.weight$": 1},
        ),
        examples=(
            Example(
                model="Phi3ForCausalLM",
                config="Phi3Config",
                kind="decoder",
                options={**DECODER, "pad_token_id": 0},
            ),
        ),
    )
)
