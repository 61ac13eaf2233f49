"""Llama-like decoders with another FFN: fused `[gate | up]` (GLM) or no gate (Arcee, Nemotron:
a squared-ReLU `up_proj` -> `down_proj`)."""

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
        examples=(
            Example(model="GlmForCausalLM", config="GlmConfig", kind="decoder", options=DECODER),
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
