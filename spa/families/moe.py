"""Mixture-of-experts decoders with Llama-like attention: Mixtral and Qwen2-MoE (issue 21 item 3).

Their experts are split into per-expert linear layers (`spa.adapt` does it, see
`spa.families.experts`). Each expert's neurons are then one FFN unit group (neuron `i` of
expert `e`: rows `i` and `I + i` of `gate_up[e]`, column `i` of `down[e]`), Qwen2-MoE's shared
expert is one more FFN of the block, and the routers (`mlp.gate`, `mlp.shared_expert_gate`)
are left untouched: they choose experts, not neurons. With the hidden size, the routers'
input columns follow the stream like every other reader's, and their `hidden_dim` attribute
(the width they reshape their input to) with them.
"""

import dataclasses

from spa.families.description import FAMILIES, Example, FeedForwardDescription
from spa.families.llama import DECODER, LLAMA

_EXPERTS = FeedForwardDescription(
    module="mlp.experts",
    inputs=("mlp.experts.gate_up.{expert}",),
    output="mlp.experts.down.{expert}",
    activation="mlp.experts.act_fn",
    chunks=2,
    experts="num_experts",
)
# Tiny: 4 experts of 16 neurons, 2 routed per token.
_MOE = {**DECODER, "num_experts_per_tok": 2, "intermediate_size": 16}

MIXTRAL = FAMILIES.register("mixtral")(
    dataclasses.replace(
        LLAMA,
        name="mixtral",
        variant_of="llama",
        ffn=_EXPERTS,
        # The router reads the stream: its weight's columns and `hidden_dim` follow it.
        stream=dataclasses.replace(
            LLAMA.stream, tensors={**LLAMA.stream.tensors, r"(^|\.)mlp\.gate\.weight$": 1}
        ),
        untouched=("mlp.gate",),
        block_attributes={"mlp.gate": {"hidden_dim": "hidden"}},
        examples=(
            Example(
                model="MixtralForCausalLM",
                config="MixtralConfig",
                kind="decoder",
                options={**_MOE, "num_local_experts": 4},
            ),
        ),
    )
)

QWEN2_MOE = FAMILIES.register("qwen2-moe")(
    dataclasses.replace(
        MIXTRAL,
        name="qwen2-moe",
        variant_of="mixtral",
        extra_ffns=(
            FeedForwardDescription(
                module="mlp.shared_expert",
                inputs=("mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj"),
                output="mlp.shared_expert.down_proj",
                activation="mlp.shared_expert.act_fn",
                config_width="shared_expert_intermediate_size",
            ),
        ),
        config_intermediate="moe_intermediate_size",  # the routed experts' width
        stream=dataclasses.replace(MIXTRAL.stream, readers=("mlp.shared_expert_gate",)),
        untouched=("mlp.gate", "mlp.shared_expert_gate"),
        examples=(
            Example(
                model="Qwen2MoeForCausalLM",
                config="Qwen2MoeConfig",
                kind="decoder",
                options={
                    **_MOE,
                    "num_experts": 4,
                    "moe_intermediate_size": 16,
                    "shared_expert_intermediate_size": 32,
                },
                name="qwen2_moe",
            ),
        ),
    )
)
