"""ModernBERT: one fused `Wqkv` (rows `[queries | keys | values]`), one fused GLU input `Wi`
(rows `[input | gate]`), LayerNorms (the first block's attention norm is an identity)."""

from spa.families.description import (
    FAMILIES,
    AttentionDescription,
    Example,
    Family,
    FeedForwardDescription,
    StreamDescription,
)
from spa.families.tiny import FEED_FORWARD

MODERNBERT = FAMILIES.register("modernbert")(
    Family(
        name="modernbert",
        blocks=r"(^|\.)layers\.\d+$",
        attention=AttentionDescription(
            module="attn", head_dim="head_dim", qkv="attn.Wqkv", output="attn.Wo"
        ),
        ffn=FeedForwardDescription(
            module="mlp", inputs=("mlp.Wi",), output="mlp.Wo", activation="mlp.act", chunks=2
        ),
        config_head_dim=None,  # ModernBertAttention derives it as hidden_size / heads
        stream=StreamDescription(
            block_norms=("attn_norm", "mlp_norm"),
            norms=(r"(^|\.)embeddings\.norm$", r"(^|\.)final_norm$"),
            tensors={r"(^|\.)embeddings\.tok_embeddings\.weight$": 1},
            pooler=r"(^|\.)head\.dense$",
        ),
        examples=(
            Example(
                model="ModernBertForSequenceClassification",
                config="ModernBertConfig",
                kind="encoder",
                options={
                    **FEED_FORWARD,
                    "vocab_size": 40,
                    "max_position_embeddings": 32,
                    "num_labels": 3,
                    "pad_token_id": 0,
                    "bos_token_id": 1,
                    "eos_token_id": 2,
                    "cls_token_id": 1,
                    "sep_token_id": 2,
                    "global_attn_every_n_layers": 1,
                    "reference_compile": False,
                },
            ),
        ),
    )
)
