"""Tiny `transformers` models of architectures spa has no family description for (issue 21).

Random init from config classes, no download. Each is wrapped in `Wrapped`, whose forward takes
one float batch (pixels, audio features, samples or embeddings) and returns `(N, classes)`
logits, so every channel criterion, LRP included, runs on it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import transformers
from torch import nn

from tests._transformers import FFN, HEADS, HIDDEN, IMAGE, LAYERS, SIZES, VOCAB

# A small vocabulary whose special tokens are id 0.
TOKENS = {"vocab_size": VOCAB, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
DECODER = {**SIZES, **TOKENS, "max_position_embeddings": 32}


class Wrapped(nn.Module):
    """A `transformers` model with a plain tensor-in, logits-out forward."""

    def __init__(self, model: nn.Module, key: str, decoder: bool) -> None:
        super().__init__()
        self.model = model
        self.key = key
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(**{self.key: x}).logits
        if self.decoder:
            return out[:, -1]
        return out.mean(1) if out.dim() == 3 else out


@dataclass(frozen=True)
class Arch:
    """One architecture: how to build it and one example's input shape.

    Args:
        name: the table id.
        model_class: the `transformers` model class name.
        config_class: its config class name.
        key: the keyword the batch is passed under.
        input_shape: one example's shape.
        options: config keyword arguments.
        decoder: a causal LM (the last position's logits are returned).
    """

    name: str
    model_class: str
    config_class: str
    key: str
    input_shape: tuple[int, ...]
    options: dict = field(default_factory=dict)
    decoder: bool = False

    def build(self) -> Wrapped:
        config = getattr(transformers, self.config_class)(**self.options)
        model = getattr(transformers, self.model_class)(config)
        return Wrapped(model, self.key, self.decoder).eval()

    def inputs(self, batch: int = 2) -> torch.Tensor:
        return torch.randn(batch, *self.input_shape)


def _vision_tower(name: str, prefix: str) -> Arch:
    """A vision tower of a two-tower (image, text) model, classifying 8x8 images."""
    return Arch(
        name,
        f"{prefix}ForImageClassification",
        f"{prefix}Config",
        "pixel_values",
        (3, 8, 8),
        {
            "vision_config": {**SIZES, "image_size": 8, "patch_size": 4, "num_channels": 3},
            "text_config": {**SIZES, "vocab_size": VOCAB},
            "num_labels": 3,
        },
    )


def _decoder(name: str, prefix: str, **options) -> Arch:
    return Arch(
        name,
        f"{prefix}ForCausalLM",
        f"{prefix}Config",
        "inputs_embeds",
        (5, HIDDEN),
        options,
        decoder=True,
    )


ARCHS: dict[str, Arch] = {
    arch.name: arch
    for arch in [
        Arch(
            "whisper_encoder",
            "WhisperForAudioClassification",
            "WhisperConfig",
            "input_features",
            (8, 16),
            {
                "d_model": HIDDEN,
                "encoder_layers": LAYERS,
                "encoder_attention_heads": HEADS,
                "encoder_ffn_dim": FFN,
                "decoder_layers": 1,
                "decoder_attention_heads": HEADS,
                "decoder_ffn_dim": FFN,
                "num_mel_bins": 8,
                "max_source_positions": 8,
                "num_labels": 3,
                "vocab_size": VOCAB,
            },
        ),
        Arch(
            "segformer",
            "SegformerForImageClassification",
            "SegformerConfig",
            "pixel_values",
            (3, 32, 32),
            {
                "num_encoder_blocks": 2,
                "depths": [1, 1],
                "sr_ratios": [2, 1],
                "hidden_sizes": [16, 32],
                "patch_sizes": [7, 3],
                "strides": [4, 2],
                "num_attention_heads": [1, 2],
                "mlp_ratios": [2, 2],
                "decoder_hidden_size": 32,
                "num_labels": 3,
            },
        ),
        Arch(
            "mobilevit",
            "MobileViTForImageClassification",
            "MobileViTConfig",
            "pixel_values",
            (3, 32, 32),
            {
                "image_size": 32,
                "patch_size": 2,
                "hidden_sizes": [16, 24, 32],
                "neck_hidden_sizes": [8, 8, 16, 16, 24, 24, 48],
                "num_attention_heads": 2,
                "num_labels": 3,
            },
        ),
        _decoder(
            "opt",
            "OPT",
            **{k: v for k, v in DECODER.items() if k != "intermediate_size"},
            ffn_dim=FFN,
            word_embed_proj_dim=HIDDEN,
        ),
        _decoder(
            "bloom",
            "Bloom",
            hidden_size=HIDDEN,
            n_layer=LAYERS,
            n_head=HEADS,
            **TOKENS,
        ),
        Arch(
            "levit",
            "LevitForImageClassification",
            "LevitConfig",
            "pixel_values",
            (3, 32, 32),
            {
                "image_size": 32,
                "hidden_sizes": [16, 24],
                "num_attention_heads": [2, 2],
                "depths": [1, 1],
                "key_dim": [4, 4],
                "drop_path_rate": 0,
                "mlp_ratio": [2, 2],
                "attention_ratio": [2, 2],
                "down_ops": [["Subsample", 4, 2, 2, 2, 2]],
                "num_labels": 3,
                "patch_size": 16,
                "kernel_size": 3,
                "stride": 2,
                "padding": 1,
            },
        ),
        _vision_tower("siglip_vision", "Siglip"),
        Arch(
            "wav2vec2",
            "Wav2Vec2ForSequenceClassification",
            "Wav2Vec2Config",
            "input_values",
            (400,),
            {
                **SIZES,
                "conv_dim": (16, 16),
                "conv_stride": (5, 2),
                "conv_kernel": (10, 3),
                "num_conv_pos_embeddings": 16,
                "num_conv_pos_embedding_groups": 4,
                "num_labels": 3,
                "vocab_size": VOCAB,
                "mask_time_prob": 0.5,
                "mask_time_length": 2,
            },
        ),
        Arch(
            "deberta_v2",
            "DebertaV2ForSequenceClassification",
            "DebertaV2Config",
            "inputs_embeds",
            (5, HIDDEN),
            {
                **SIZES,
                "vocab_size": VOCAB,
                "max_position_embeddings": 32,
                "num_labels": 3,
                "relative_attention": True,
                "pos_att_type": ["p2c", "c2p"],
                "position_buckets": 8,
                "max_relative_positions": 16,
            },
        ),
        _decoder(
            "falcon",
            "Falcon",
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            **TOKENS,
        ),
        _vision_tower("clip_vision", "CLIP"),
        Arch(
            "beit",
            "BeitForImageClassification",
            "BeitConfig",
            "pixel_values",
            (3, 8, 8),
            {**SIZES, **IMAGE, "use_relative_position_bias": True},
        ),
        Arch(
            "t5_encoder",
            "T5ForTokenClassification",
            "T5Config",
            "inputs_embeds",
            (5, HIDDEN),
            {
                "d_model": HIDDEN,
                "num_layers": LAYERS,
                "num_heads": HEADS,
                "d_kv": 8,
                "d_ff": FFN,
                "vocab_size": VOCAB,
                "num_labels": 3,
            },
        ),
        _decoder("gemma", "Gemma", **DECODER, num_key_value_heads=2, head_dim=16),
        _decoder("qwen3", "Qwen3", **DECODER, num_key_value_heads=2, head_dim=8),
        Arch(
            "dinov2",
            "Dinov2ForImageClassification",
            "Dinov2Config",
            "pixel_values",
            (3, 8, 8),
            {
                **{k: v for k, v in SIZES.items() if k != "intermediate_size"},
                "mlp_ratio": 2,
                **IMAGE,
            },
        ),
        _decoder(
            "gptj",
            "GPTJ",
            n_embd=HIDDEN,
            n_layer=LAYERS,
            n_head=HEADS,
            rotary_dim=4,
            n_inner=FFN,
            n_positions=32,
            **TOKENS,
        ),
    ]
}


def build(name: str) -> tuple[Wrapped, torch.Tensor]:
    """The wrapped tiny model `name` (eval mode) and a batch of two examples for it."""
    arch = ARCHS[name]
    return arch.build(), arch.inputs()


def traced_path(monkeypatch) -> None:
    """Make `channel_groups` take the traced path even for a model a family describes (families
    now match OPT, BLOOM, Falcon, BEiT, Gemma, Qwen3 and Whisper's encoder by structure), so the
    traced path is tested on them explicitly (issue 21, item 4)."""
    import spa.pruning.groups

    monkeypatch.setattr(spa.pruning.groups, "describe", lambda model: None)
