"""T5-style encoders (T5, and gated-FFN T5 v1.1 / mT5; UMT5): `layer.0.SelfAttention.{q,k,v,o}`,
an FFN `layer.1.DenseReluDense.wi` (gated: `wi_0`, `wi_1`) -> `wo`, weight-only RMS norms
(`T5LayerNorm`) before each sub-layer, no biases.

T5 computes its relative position bias (`relative_attention_bias`, one column per head) in the
first block only and passes it to every later block, so every block must keep the same heads:
heads are one unit group across all blocks (`AttentionDescription.tied_heads`). UMT5 has a bias
table in every block, so its blocks keep heads of their own. Only encoder blocks are described:
in an encoder-decoder model the decoder's cross-attention reads the encoder's stream, so there
the hidden size is refused (heads and FFN of the encoder still prune).
"""

import dataclasses

from spa.families.description import (
    FAMILIES,
    AttentionDescription,
    Example,
    Family,
    FeedForwardDescription,
    StreamDescription,
)
from spa.families.tiny import VOCABULARY

_BIAS = "layer.0.SelfAttention.relative_attention_bias.weight"  # (buckets, heads)
_FFN = "layer.1.DenseReluDense"
# Tiny: 32 wide, 2 blocks of 4 heads of 8, 64 FFN neurons, three token labels.
_TINY = {
    "d_model": 32,
    "num_layers": 2,
    "num_heads": 4,
    "d_kv": 8,
    "d_ff": 64,
    "num_labels": 3,
    **VOCABULARY,
    "pad_token_id": 0,
    "decoder_start_token_id": 0,
}


def _example(prefix: str, name: str, **options) -> Example:
    return Example(
        model=f"{prefix}ForTokenClassification",
        config=f"{prefix}Config",
        kind="encoder",
        options={**_TINY, **options},
        name=name,
    )


T5 = FAMILIES.register("t5")(
    Family(
        name="t5",
        blocks=r"(^|\.)encoder\.block\.\d+$",
        attention=AttentionDescription(
            module="layer.0.SelfAttention",
            head_dim="key_value_proj_dim",
            query="layer.0.SelfAttention.q",
            key="layer.0.SelfAttention.k",
            value="layer.0.SelfAttention.v",
            output="layer.0.SelfAttention.o",
            attributes={"n_heads": "heads", "inner_dim": "width"},
            optional_per_head={_BIAS: 1},
            tied_heads=(
                "T5 computes its position bias in the first block and passes it to every later "
                "block, one slice per head"
            ),
        ),
        ffn=FeedForwardDescription(
            module=_FFN, inputs=(f"{_FFN}.wi",), output=f"{_FFN}.wo", activation=f"{_FFN}.act"
        ),
        config_heads="num_heads",
        config_intermediate="d_ff",
        config_head_dim="d_kv",
        config_hidden="d_model",
        stream=StreamDescription(
            block_norms=("layer.0.layer_norm", "layer.1.layer_norm"),
            norms=(r"(^|\.)encoder\.final_layer_norm$",),
            tensors={r"(^|\.)(shared|embed_tokens)\.weight$": 1},
            unsliced={
                r"(^|\.)decoder$": "a decoder whose cross-attention reads the encoder's stream"
            },
        ),
        examples=(_example("T5", "t5-encoder", feed_forward_proj="relu"),),
    )
)

T5_GATED = FAMILIES.register("t5-gated")(
    dataclasses.replace(
        T5,
        name="t5-gated",
        variant_of="t5",
        ffn=dataclasses.replace(T5.ffn, inputs=(f"{_FFN}.wi_0", f"{_FFN}.wi_1")),
        examples=(
            _example("T5", "t5-v1.1-encoder", feed_forward_proj="gated-gelu"),
            _example("MT5", "mt5-encoder"),
        ),
    )
)

UMT5 = FAMILIES.register("umt5")(
    dataclasses.replace(
        T5_GATED,
        name="umt5",
        variant_of="t5-gated",
        attention=dataclasses.replace(
            T5.attention, per_head={_BIAS: 1}, optional_per_head={}, tied_heads=None
        ),
        examples=(_example("UMT5", "umt5-encoder"),),
    )
)
