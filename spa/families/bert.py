"""BERT family (BERT, RoBERTa, ELECTRA): separate query/key/value, dense FFN."""

from spa.families.description import (
    FAMILIES,
    AttentionDescription,
    Example,
    Family,
    FeedForwardDescription,
    StreamDescription,
)
from spa.families.tiny import FEED_FORWARD

BERT = FAMILIES.register("bert")(
    Family(
        name="bert",
        blocks=r"(^|\.)layer\.\d+$",
        attention=AttentionDescription(
            module="attention.self",
            head_dim="attention_head_size",
            query="attention.self.query",
            key="attention.self.key",
            value="attention.self.value",
            output="attention.output.dense",
            attributes={"num_attention_heads": "heads", "all_head_size": "width"},
        ),
        ffn=FeedForwardDescription(
            module="intermediate",
            inputs=("intermediate.dense",),
            output="output.dense",
            activation="intermediate.intermediate_act_fn",
        ),
        # BertSelfAttention derives the head size as hidden_size / num_attention_heads.
        config_head_dim=None,
        stream=StreamDescription(
            block_norms=("attention.output.LayerNorm", "output.LayerNorm"),
            norms=(r"(^|\.)embeddings\.LayerNorm$",),
            tensors={r"(^|\.)embeddings\.\w+_embeddings\.weight$": 1},
            # BERT's pooler; RoBERTa's and ELECTRA's classification heads pool with a `dense`.
            pooler=r"(^|\.)(pooler|classifier)\.dense$",
        ),
        examples=(
            Example(
                model="BertForSequenceClassification",
                config="BertConfig",
                kind="encoder",
                options={
                    **FEED_FORWARD,
                    "vocab_size": 40,
                    "max_position_embeddings": 16,
                    "num_labels": 3,
                },
            ),
        ),
    )
)
