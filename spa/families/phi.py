"""Phi (phi-1, phi-1.5, phi-2): a Llama-like attention whose output projection is `dense`,
a plain `fc1` -> `fc2` MLP, and one LayerNorm per block read by attention and MLP in parallel
(their outputs are added to the stream together, as in Cohere). Rotary embeddings cover only
part of each head (`partial_rotary_factor`), inside the head, so whole heads still prune; with
`qk_layernorm` its q/k LayerNorms are over one head's channels, shared by all heads.
"""

import dataclasses

from spa.families.description import FAMILIES, Example, FeedForwardDescription
from spa.families.llama import LLAMA
from spa.families.tiny import DECODER

PHI = FAMILIES.register("phi")(
    dataclasses.replace(
        LLAMA,
        name="phi",
        attention=dataclasses.replace(
            LLAMA.attention,
            output="self_attn.dense",
            head_norms=("self_attn.q_layernorm", "self_attn.k_layernorm"),
        ),
        ffn=FeedForwardDescription(
            module="mlp", inputs=("mlp.fc1",), output="mlp.fc2", activation="mlp.activation_fn"
        ),
        stream=dataclasses.replace(
            LLAMA.stream,
            block_norms=("input_layernorm",),
            optional_block_norms=(),
            norms=(r"(^|\.)final_layernorm$",),
        ),
        examples=(
            Example(model="PhiForCausalLM", config="PhiConfig", kind="decoder", options=DECODER),
            Example(
                model="PhiForCausalLM",
                config="PhiConfig",
                kind="decoder",
                options={**DECODER, "qk_layernorm": True},
                name="phi-qk-layernorm",
            ),
        ),
    )
)
