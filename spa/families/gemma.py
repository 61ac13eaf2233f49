"""Variants of the Llama-like family: per-head q/k norms (Qwen3), four norms per block (Gemma2),
both (Gemma3).

A q/k norm normalises each head's `head_dim` channels with one weight shared by all heads, so
removing a head leaves it unchanged. Gemma's extra block norms (`pre_feedforward_layernorm`,
`post_feedforward_layernorm`) sit on the residual stream.
"""

import dataclasses

from spa.families.description import FAMILIES, Example, StreamDescription
from spa.families.llama import DECODER, LLAMA

_QK_NORMS = ("self_attn.q_norm", "self_attn.k_norm")
_GEMMA = {"head_dim": 16, "query_pre_attn_scalar": 16}  # head_dim != hidden / heads

QWEN3 = FAMILIES.register("qwen3")(
    dataclasses.replace(
        LLAMA,
        name="qwen3",
        variant_of="llama",
        attention=dataclasses.replace(LLAMA.attention, head_norms=_QK_NORMS),
        examples=(
            Example(
                model="Qwen3ForCausalLM", config="Qwen3Config", kind="decoder", options=DECODER
            ),
        ),
    )
)

GEMMA2 = FAMILIES.register("gemma2")(
    dataclasses.replace(
        LLAMA,
        name="gemma2",
        variant_of="llama",
        stream=StreamDescription(
            block_norms=(
                "input_layernorm",
                "post_attention_layernorm",
                "pre_feedforward_layernorm",
                "post_feedforward_layernorm",
            ),
            norms=(r"(^|\.)norm$",),
            tensors={r"(^|\.)embed_tokens\.weight$": 1},
        ),
        examples=(
            Example(
                model="Gemma2ForCausalLM",
                config="Gemma2Config",
                kind="decoder",
                options={**DECODER, **_GEMMA},
            ),
        ),
    )
)

GEMMA3 = FAMILIES.register("gemma3")(
    dataclasses.replace(
        GEMMA2,
        name="gemma3",
        variant_of="gemma2",
        attention=dataclasses.replace(LLAMA.attention, head_norms=_QK_NORMS),
        examples=(
            Example(
                model="Gemma3ForCausalLM",
                config="Gemma3TextConfig",
                kind="decoder",
                options={**DECODER, **_GEMMA},
            ),
        ),
    )
)
