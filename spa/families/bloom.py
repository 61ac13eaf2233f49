"""BLOOM: one fused `query_key_value` interleaved per head (`[q_h | k_h | v_h]`), ALiBi
position biases, a dense FFN, LayerNorms (also on the word embeddings).

Heads are not removable: the ALiBi slope of each head is computed from the head count at
run time, so the kept heads would get other heads' slopes. FFN neurons and the hidden size are.
"""

from spa.families.description import (
    FAMILIES,
    AttentionDescription,
    Example,
    Family,
    StreamDescription,
)
from spa.families.parts import dense_4h_ffn

BLOOM = FAMILIES.register("bloom")(
    Family(
        name="bloom",
        blocks=r"(^|\.)h\.\d+$",
        attention=AttentionDescription(
            module="self_attention",
            head_dim="head_dim",
            qkv="self_attention.query_key_value",
            qkv_layout="grouped",
            output="self_attention.dense",
            attributes={"num_heads": "heads"},
            fixed_heads=(
                "BLOOM computes each head's ALiBi slope from the number of heads at run time, "
                "so removing heads would change the kept heads' position biases"
            ),
        ),
        ffn=dense_4h_ffn("mlp.gelu_impl"),
        config_heads="n_head",
        config_intermediate=None,  # 4 x hidden size
        config_head_dim=None,
        stream=StreamDescription(
            block_norms=("input_layernorm", "post_attention_layernorm"),
            norms=(r"(^|\.)word_embeddings_layernorm$", r"(^|\.)ln_f$"),
            tensors={r"(^|\.)word_embeddings\.weight$": 1},
        ),
        examples=(
            Example(
                model="BloomForCausalLM",
                config="BloomConfig",
                kind="decoder",
                options={
                    "hidden_size": 32,
                    "n_layer": 2,
                    "n_head": 4,
                    "vocab_size": 40,
                    "bos_token_id": 0,
                    "eos_token_id": 0,
                },
            ),
        ),
    )
)
