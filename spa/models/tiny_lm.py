"""A tiny Llama-style causal language model (GQA, SwiGLU, RMSNorm, tied embeddings).

Built from `transformers`' own `LlamaConfig` with random weights, so the language-model demo
and tests need no download; it has the structure of Llama, Qwen2 and Mistral checkpoints.
Registered in `spa.models.MODELS` as "tiny_llama" (the builder's arguments are `model.options`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM


def tiny_llama(
    vocab_size: int = 256,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 128,
    max_positions: int = 256,
    tie_word_embeddings: bool = True,
) -> LlamaForCausalLM:
    """A randomly initialised `LlamaForCausalLM` of the given (small) size.

    Args:
        vocab_size: tokens (256 fits the byte-level tokenizer).
        hidden_size: width of the residual stream; divisible by `num_heads`.
        num_layers: decoder layers.
        num_heads: query heads; a multiple of `num_key_value_heads`.
        num_key_value_heads: key/value heads (grouped-query attention when fewer than heads).
        intermediate_size: SwiGLU width.
        max_positions: longest sequence.
        tie_word_embeddings: share the input embedding with the LM head.
    """
    from transformers import LlamaConfig, LlamaForCausalLM  # imported when a model is built

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_key_value_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    return LlamaForCausalLM(config)
