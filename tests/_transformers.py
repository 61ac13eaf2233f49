"""Tiny `transformers` models of every described family (random init, no download).

Each case wraps a `transformers` model in `Net`, whose forward takes a float batch (embeddings
for text models, pixels for ViT) and returns `(N, classes)` logits (the last position's logits
for causal LMs), so every channel criterion, LRP included, runs on it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import transformers
from torch import nn

HIDDEN, LAYERS, HEADS, FFN, VOCAB = 32, 2, 4, 64, 40


class Net(nn.Module):
    """A `transformers` model with a plain tensor-in, logits-out forward."""

    def __init__(self, model: nn.Module, kind: str) -> None:
        super().__init__()
        self.model = model
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "image":
            return self.model(pixel_values=x).logits
        if x.is_floating_point():
            out = self.model(inputs_embeds=x, use_cache=False)
        else:
            out = self.model(input_ids=x, use_cache=False)
        return out.logits[:, -1] if self.kind == "decoder" else out.logits


def bert() -> nn.Module:
    config = transformers.BertConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        vocab_size=VOCAB,
        max_position_embeddings=16,
        num_labels=3,
    )
    return Net(transformers.BertForSequenceClassification(config), "encoder")


def vit() -> nn.Module:
    config = transformers.ViTConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        image_size=8,
        patch_size=4,
        num_channels=3,
        num_labels=3,
    )
    return Net(transformers.ViTForImageClassification(config), "image")


def gpt2() -> nn.Module:
    config = transformers.GPT2Config(
        n_embd=HIDDEN,
        n_layer=LAYERS,
        n_head=HEADS,
        n_inner=FFN,
        vocab_size=VOCAB,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    return Net(transformers.GPT2LMHeadModel(config), "decoder")


def llama() -> nn.Module:
    """Llama-style decoder: 4 query heads, 2 key/value heads, SwiGLU, RMSNorm, tied embeddings."""
    config = transformers.LlamaConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=2,
        intermediate_size=FFN,
        vocab_size=VOCAB,
        max_position_embeddings=32,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return Net(transformers.LlamaForCausalLM(config), "decoder")


@dataclass(frozen=True)
class Case:
    """A family's tiny model and a batch for it."""

    family: str
    build: Callable[[], nn.Module]
    decoder: bool

    def inputs(self, batch: int = 2) -> torch.Tensor:
        if self.family == "vit":
            return torch.randn(batch, 3, 8, 8)
        return torch.randn(batch, 5, HIDDEN)


CASES = [
    Case("bert", bert, False),
    Case("vit", vit, False),
    Case("gpt2", gpt2, True),
    Case("llama", llama, True),
]
