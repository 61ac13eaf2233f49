"""Shared Torch-Pruning set-up for the benchmarks that run its LLM flow beside spa."""

from __future__ import annotations

from torch import nn


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
