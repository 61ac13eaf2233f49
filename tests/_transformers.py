"""Tiny `transformers` models of every described family (random init, no download).

Each case wraps a `transformers` model in `Net`, whose forward takes a float batch (embeddings
for text models, pixels for ViT and Swin) and returns `(N, classes)` logits (the last position's
logits for causal LMs), so every channel criterion, LRP included, runs on it unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import transformers
from torch import nn

import spa

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
        if self.kind == "decoder":
            return out.logits[:, -1]
        # A token classifier (T5's encoder): its labels averaged over the positions.
        return out.logits.mean(1) if out.logits.dim() == 3 else out.logits


# The sizes every tiny model shares, under the names most `transformers` configs use.
SIZES = {
    "hidden_size": HIDDEN,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "intermediate_size": FFN,
}
IMAGE = {"image_size": 8, "patch_size": 4, "num_channels": 3, "num_labels": 3}


def tiny(model_class: str, config_class: str, kind: str, **options) -> Net:
    """`transformers.<model_class>` built from `<config_class>(**SIZES, **options)`, in `Net`."""
    config = getattr(transformers, config_class)(**SIZES, **options)
    return Net(getattr(transformers, model_class)(config), kind)


def bert() -> nn.Module:
    return tiny(
        "BertForSequenceClassification",
        "BertConfig",
        "encoder",
        vocab_size=VOCAB,
        max_position_embeddings=16,
        num_labels=3,
    )


def vit() -> nn.Module:
    return tiny("ViTForImageClassification", "ViTConfig", "image", **IMAGE)


def deit() -> nn.Module:
    """DeiT: ViT's modules plus a distillation token next to the class token."""
    return tiny("DeiTForImageClassification", "DeiTConfig", "image", **IMAGE)


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
    return tiny(
        "LlamaForCausalLM",
        "LlamaConfig",
        "decoder",
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=32,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )


def swin() -> nn.Module:
    """Swin: 2 stages of 2 blocks (16 wide with 2 heads, then 32 wide with 4 heads; head_dim 8,
    FFN 64 then 128), 2x2 windows (shifted in every second block), patch merging between."""
    config = transformers.SwinConfig(
        image_size=32,
        patch_size=4,
        embed_dim=16,
        depths=[2, 2],
        num_heads=[2, 4],
        window_size=2,
        num_labels=3,
    )
    model = transformers.SwinForImageClassification(config)
    with torch.no_grad():  # transformers starts the per-head tables at zero: make each head's own
        for name, parameter in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                parameter.normal_()
    return Net(model, "image")


@dataclass(frozen=True)
class Case:
    """A family's tiny model and a batch for it.

    Args:
        family: the family name (`spa.families.FAMILIES`).
        build: makes the wrapped model.
        decoder: a causal LM (generates).
        input_shape: one example's shape (embeddings, or pixels for image models).
        stages: (blocks, heads, width, FFN neurons) per run of identical blocks.
    """

    family: str
    build: Callable[[], nn.Module]
    decoder: bool
    input_shape: tuple[int, ...] = (5, HIDDEN)
    stages: tuple[tuple[int, int, int, int], ...] = ((LAYERS, HEADS, HIDDEN, FFN),)

    @property
    def blocks(self) -> int:
        """The number of transformer blocks."""
        return sum(stage[0] for stage in self.stages)

    def block_counts(self) -> list[tuple[int, int, int]]:
        """(heads, width, FFN neurons) of every block, in module order."""
        return [(h, w, f) for n, h, w, f in self.stages for _ in range(n)]

    def inputs(self, batch: int = 2) -> torch.Tensor:
        return torch.randn(batch, *self.input_shape)


CASES = [
    Case("bert", bert, False),
    Case("vit", vit, False, input_shape=(3, 8, 8)),
    Case("gpt2", gpt2, True),
    Case("llama", llama, True),
    Case("swin", swin, False, input_shape=(3, 32, 32), stages=((2, 2, 16, 64), (2, 4, 32, 128))),
]


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """`actual` equals `expected` to 1e-4 of the largest expected magnitude."""
    scale = expected.abs().max().clamp_min(1e-6)
    torch.testing.assert_close(actual / scale, expected / scale, rtol=0, atol=1e-4)


def adapted_after_step(
    model: nn.Module, inputs: Callable[[], torch.Tensor], train: bool = False, rank: int = 2
) -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    """(a copy of `model` as the base, `model` with SPLoRA `rank` after one large SGD step on
    `inputs()` with targets [0, 2], the inputs, the targets); `train` steps in train mode."""
    base = copy.deepcopy(model)
    spa.adapt(model, spa.SPLoRAConfig(rank=rank))
    x, y = inputs(), torch.tensor([0, 2])
    if train:
        model.train()
    F.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter.add_(parameter.grad, alpha=-0.5)
                parameter.grad = None
    return base, model, x, y


def assert_same_generation(model: nn.Module, compacted: nn.Module, base: nn.Module, path) -> None:
    """Greedy decoding of 8 tokens with the KV cache gives the same tokens from the masked
    `Net` `model`, its `compacted` copy and its bundle (saved to `path`) loaded onto `base`."""
    prompt = torch.randint(1, VOCAB, (1, 4))
    options = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False, "use_cache": True}
    with torch.no_grad():
        expected = model.model.generate(prompt, **options)
        assert torch.equal(compacted.model.generate(prompt, **options), expected)
        spa.save_task(spa.compacted(model), path, base_model=base)
        assert torch.equal(spa.load_task(base, path).model.generate(prompt, **options), expected)
    assert expected.shape == (1, 12)


def assert_deploys(model: nn.Module, base: nn.Module, x, masked: torch.Tensor, path) -> nn.Module:
    """masked == compacted == fused == loaded bundle == `TaskHost` (scaled 1e-4); the compacted."""
    from spa.pruning import compact

    with torch.no_grad():
        compacted = compact(copy.deepcopy(model), x)
        assert_close_scaled(compacted(x), masked)
        assert_close_scaled(spa.fuse(copy.deepcopy(compacted))(x), masked)
    spa.save_task(compacted, path, base_model=base)
    host = spa.TaskHost(base)
    host.add_task("task", path)
    with torch.no_grad():
        assert_close_scaled(spa.load_task(base, path)(x), masked)
        assert_close_scaled(host.model("task")(x), masked)
    return compacted
