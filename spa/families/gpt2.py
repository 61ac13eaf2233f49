"""GPT-2 family: one fused `c_attn` projection (rows [q | k | v]), `c_proj`, `mlp.c_fc/c_proj`.

Its projections are `transformers` `Conv1D` layers; `spa.adapt` turns them into equivalent
`nn.Linear` layers (see `spa.adapters.transposed`), so descriptions speak of output rows.
"""

from spa.families.description import (
    FAMILIES,
    AttentionDescription,
    Example,
    Family,
    FeedForwardDescription,
    StreamDescription,
)
from spa.families.tiny import GPT2_NAMES

GPT2 = FAMILIES.register("gpt2")(
    Family(
        name="gpt2",
        blocks=r"(^|\.)h\.\d+$",
        attention=AttentionDescription(
            module="attn",
            head_dim="head_dim",
            qkv="attn.c_attn",
            output="attn.c_proj",
            # `split_size` splits c_attn's output into q, k, v: it is the kept width.
            attributes={"num_heads": "heads", "split_size": "width"},
        ),
        ffn=FeedForwardDescription(
            module="mlp", inputs=("mlp.c_fc",), output="mlp.c_proj", activation="mlp.act"
        ),
        config_heads="n_head",
        config_intermediate="n_inner",
        config_head_dim=None,  # GPT2Attention derives it as n_embd / n_head
        config_hidden="n_embd",
        stream=StreamDescription(
            block_norms=("ln_1", "ln_2"),
            norms=(r"(^|\.)ln_f$",),
            tensors={r"(^|\.)(wte|wpe)\.weight$": 1},
        ),
        examples=(
            Example(
                model="GPT2LMHeadModel",
                config="GPT2Config",
                kind="decoder",
                options=GPT2_NAMES,
            ),
        ),
    )
)
