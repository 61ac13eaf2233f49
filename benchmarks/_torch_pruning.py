"""Shared Torch-Pruning set-up for the benchmarks that run its LLM flow beside spa."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def rope_hidden() -> Iterator[None]:
    """Trace Llama-style models without the rotary embedding; restored afterwards.

    Torch-Pruning 1.6 reads rope's `rotate_half` (two slices and a `cat`) as a concatenation
    across channels, so the query/key group goes round q -> rope -> add -> q with shifted
    indices and its tracer never finishes. Pruning whole heads (head dims kept), rope only mixes
    dimensions inside one head, so tracing without it gives the same groups.
    """
    from transformers.models.llama import modeling_llama

    saved = modeling_llama.apply_rotary_pos_emb
    modeling_llama.apply_rotary_pos_emb = lambda q, k, *args, **kwargs: (q, k)
    try:
        yield
    finally:
        modeling_llama.apply_rotary_pos_emb = saved


def llama_heads(model: nn.Module) -> dict[nn.Module, int]:
    """`MetaPruner`'s `num_heads`: each Llama-style q/k/v projection and its head count."""
    config = model.config
    heads = {}
    for name, module in model.named_modules():
        if name.endswith("self_attn"):
            heads[module.q_proj] = config.num_attention_heads
            heads[module.k_proj] = config.num_key_value_heads
            heads[module.v_proj] = config.num_key_value_heads
    return heads
