"""Cohere: a Llama-like decoder with one norm per block, attention and FFN in parallel.

Cohere's `CohereLayerNorm` (mean-centred, weight only) runs once per block; attention and FFN
both read its output and their outputs are added to the stream together. With `use_qk_norm`
its q/k norms hold one weight row per head (`(heads, head_dim)`): those slice with their heads
(`AttentionDescription.per_head`; the key norm has one row per key/value head).
"""

import dataclasses

from spa.families.description import FAMILIES, Example
from spa.families.llama import LLAMA
from spa.families.tiny import DECODER

COHERE = FAMILIES.register("cohere")(
    dataclasses.replace(
        LLAMA,
        name="cohere",
        variant_of="llama",
        attention=dataclasses.replace(LLAMA.attention, head_norms=()),
        stream=dataclasses.replace(
            LLAMA.stream, block_norms=("input_layernorm",), optional_block_norms=()
        ),
        examples=(
            Example(
                model="CohereForCausalLM", config="CohereConfig", kind="decoder", options=DECODER
            ),
        ),
    )
)

COHERE_QK_NORM = FAMILIES.register("cohere-qk-norm")(
    dataclasses.replace(
        COHERE,
        name="cohere-qk-norm",
        variant_of="cohere",
        attention=dataclasses.replace(
            COHERE.attention,
            per_head={"self_attn.q_norm.weight": 0},
            per_kv_head={"self_attn.k_norm.weight": 0},
        ),
        examples=(
            Example(
                model="CohereForCausalLM",
                config="CohereConfig",
                kind="decoder",
                options={**DECODER, "use_qk_norm": True},
                name="cohere-qk-norm",
            ),
        ),
    )
)
