"""Llama-like decoders with post-norms: OLMo2 (q/k norms over all heads together), and EXAONE 4
(per-head q/k norms, as Qwen3's).

OLMo2 normalises each block's attention and FFN *outputs* (`post_attention_layernorm`,
`post_feedforward_layernorm`) and its queries and keys with RMS norms over all heads together
(`q_norm` / `k_norm`, `heads x head_dim` channels): their channels go with their heads
(`AttentionDescription.joint_norms`), masked over the kept channels only.
"""

import dataclasses

from spa.families.description import FAMILIES, Example
from spa.families.llama import LLAMA
from spa.families.tiny import DECODER

OLMO2 = FAMILIES.register("olmo2")(
    dataclasses.replace(
        LLAMA,
        name="olmo2",
        variant_of="llama",
        attention=dataclasses.replace(
            LLAMA.attention,
            head_norms=(),
            joint_norms={"self_attn.q_norm": "query", "self_attn.k_norm": "key"},
        ),
        stream=dataclasses.replace(
            LLAMA.stream,
            block_norms=("post_attention_layernorm", "post_feedforward_layernorm"),
            optional_block_norms=(),
        ),
        examples=(
            Example(
                model="Olmo2ForCausalLM", config="Olmo2Config", kind="decoder", options=DECODER
            ),
        ),
    )
)

POST_NORM = FAMILIES.register("post-norm")(
    dataclasses.replace(
        OLMO2,
        name="post-norm",
        variant_of="llama",
        attention=LLAMA.attention,  # per-head q/k norms, where a model has them
        examples=(
            Example(
                model="Exaone4ForCausalLM",
                config="Exaone4Config",
                kind="decoder",
                options=DECODER,
                name="exaone4",
            ),
        ),
    )
)
