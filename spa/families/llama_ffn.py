"""Llama-like decoders with another FFN: fused `[gate | up]` (GLM; GLM-4 also normalises each
sub-layer's output), no gate (Arcee, Nemotron: a squared-ReLU `up_proj` -> `down_proj`), or
GPT-style `c_fc` -> `c_proj` (Starcoder2)."""

import dataclasses

from spa.families.description import FAMILIES, Example, FeedForwardDescription
from spa.families.llama import LLAMA
from spa.families.parts import GATE_UP_FFN
from spa.families.tiny import DECODER

GLM = FAMILIES.register("glm")(
    dataclasses.replace(
        LLAMA,
        name="glm",
        variant_of="llama",
        ffn=GATE_UP_FFN,
        stream=dataclasses.replace(
            LLAMA.stream, optional_block_norms=("post_self_attn_layernorm", "post_mlp_layernorm")
        ),
        examples=(
            Example(model="GlmForCausalLM", config="GlmConfig", kind="decoder", options=DECODER),
            Example(
                model="Glm4ForCausalLM",
                config="Glm4Config",
                kind="decoder",
                options=DECODER,
                name="glm4",
            ),
        ),
    )
)

UP_DOWN = FAMILIES.register("llama-up-down")(
    dataclasses.replace(
        LLAMA,
        name="llama-up-down",
        variant_of="llama",
        ffn=FeedForwardDescription(
            module="mlp",
            inputs=("mlp.up_proj",),
            output="mlp.down_proj",
            activation="mlp.act_fn",
            attributes={"intermediate_size": "neurons"},
        ),
        examples=(
            Example(
                model="ArceeForCausalLM",
                config="ArceeConfig",
                kind="decoder",
                options=DECODER,
                name="arcee",
            ),
        ),
    )
)

C_FC = FAMILIES.register("llama-c-fc")(
    dataclasses.replace(
        LLAMA,
        name="llama-c-fc",
        variant_of="llama",
        ffn=FeedForwardDescription(
            module="mlp", inputs=("mlp.c_fc",), output="mlp.c_proj", activation="mlp.act"
        ),
        examples=(
            Example(
                model="Starcoder2ForCausalLM",
                config="Starcoder2Config",
                kind="decoder",
                options=DECODER,
                name="starcoder2",
            ),
        ),
    )
)
