"""GPT-J: separate q/k/v/out projections without biases, partial rotary embeddings, one LayerNorm
per block read by attention and FFN (`mlp.fc_in` -> `mlp.fc_out`) in parallel."""

from spa.families.description import (
    FAMILIES,
    AttentionDescription,
    Example,
    Family,
    FeedForwardDescription,
    StreamDescription,
)
from spa.families.tiny import GPT2_NAMES

GPTJ = FAMILIES.register("gptj")(
    Family(
        name="gptj",
        blocks=r"(^|\.)h\.\d+$",
        attention=AttentionDescription(
            module="attn",
            head_dim="head_dim",
            query="attn.q_proj",
            key="attn.k_proj",
            value="attn.v_proj",
            output="attn.out_proj",
            attributes={"num_attention_heads": "heads"},
        ),
        ffn=FeedForwardDescription(
            module="mlp", inputs=("mlp.fc_in",), output="mlp.fc_out", activation="mlp.act"
        ),
        config_heads="n_head",
        config_intermediate="n_inner",
        config_head_dim=None,  # GPTJAttention derives it as n_embd / n_head
        config_hidden="n_embd",
        stream=StreamDescription(
            block_norms=("ln_1",),
            norms=(r"(^|\.)ln_f$",),
            tensors={r"(^|\.)wte\.weight$": 1},
        ),
        examples=(
            Example(
                model="GPTJForCausalLM",
                config="GPTJConfig",
                kind="decoder",
                options={**GPT2_NAMES, "rotary_dim": 4, "pad_token_id": 0},
            ),
        ),
    )
)
