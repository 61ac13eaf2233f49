"""The CLIP-style encoder family beyond its registered examples: bare CLIP-shaped encoders
(CLIP text, and towers of other architectures that need no family of their own) with a linear
probe, and encoders whose own projection is the task head, pruned on heads, FFN and hidden size
(masked == compacted); SigLIP's attention-pooling head refused for the hidden size in one line."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from torch import nn

from spa.errors import ConfigError
from spa.families import describe
from spa.families.tiny import FEED_FORWARD, TOKENS
from spa.pruning import apply_masks, channel_groups, compact, compute_masks, refresh_groups, score
from tests._transformers import adapted_after_step, assert_close_scaled, assert_deploys

VISION = {**FEED_FORWARD, "image_size": 32, "patch_size": 8, "num_channels": 3}
TEXT = {**FEED_FORWARD, **TOKENS, "pad_token_id": 0}


class Probe(nn.Module):
    """A bare encoder and a linear classifier on its mean-pooled last hidden state."""

    def __init__(self, encoder: nn.Module, width: int, key: str) -> None:
        super().__init__()
        self.encoder, self.key = encoder, key
        self.classifier = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(**{self.key: x}).last_hidden_state.mean(1))


# (model class, config class, options): CLIP text, and vision towers no family names.
ENCODERS = {
    "clip-text": ("CLIPTextModel", "CLIPTextConfig", TEXT),
    "altclip-vision": ("AltCLIPVisionModel", "AltCLIPVisionConfig", VISION),
    "git-vision": ("GitVisionModel", "GitVisionConfig", VISION),
    "owlv2-vision": ("Owlv2VisionModel", "Owlv2VisionConfig", VISION),
    "chinese-clip-vision": ("ChineseCLIPVisionModel", "ChineseCLIPVisionConfig", VISION),
    "xclip-text": ("XCLIPTextModel", "XCLIPTextConfig", TEXT),
}


def _probe(name: str) -> tuple[nn.Module, callable]:
    model, config, options = ENCODERS[name]
    encoder = getattr(transformers, model)(getattr(transformers, config)(**options))
    text = "Text" in model
    probe = Probe(encoder, options["hidden_size"], "input_ids" if text else "pixel_values")

    def inputs() -> torch.Tensor:
        return torch.randint(1, 40, (2, 6)) if text else torch.randn(2, 3, 32, 32)

    return probe.eval(), inputs


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ENCODERS))
def test_clip_shaped_encoder_is_matched_and_masked_equals_compacted(name):
    torch.manual_seed(0)
    probe, inputs = _probe(name)
    assert describe(probe).name == "clip"
    _, model, x, y = adapted_after_step(probe, inputs)
    units = ("heads", "ffn", "hidden")
    groups = channel_groups(model, x, units=units)
    scores = score(model, "taylor", groups, data=[(x, y)])
    apply_masks(model, compute_masks(groups, scores, 0.5, ranking="local", round_to={"hidden": 4}))
    groups = refresh_groups(model, groups)
    for unit in units:  # every unit really lost channels somewhere
        assert any(sum(g.kept) < g.size for g in groups if g.unit == unit), unit
    with torch.no_grad():
        masked = model(x)
        compacted = compact(copy.deepcopy(model), x)
        assert_close_scaled(compacted(x), masked)
    hidden = compacted.encoder.config.hidden_size
    assert compacted.classifier.in_features < hidden  # the probe reads the narrower stream


class Output(nn.Module):
    """A bare encoder whose own output projection is the task head (its pooled embeddings)."""

    def __init__(self, encoder: nn.Module, key: str, output: str) -> None:
        super().__init__()
        self.encoder, self.key, self.output = encoder, key, output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.encoder(**{self.key: x}), self.output)


# (model class, config class, options, output): encoders ending in their own projection.
PROJECTED = {
    "clip-vision-projection": (
        "CLIPVisionModelWithProjection",
        "CLIPVisionConfig",
        {**VISION, "projection_dim": 3},
        "image_embeds",
    ),
    "clip-text-projection": (
        "CLIPTextModelWithProjection",
        "CLIPTextConfig",
        {**TEXT, "projection_dim": 3},
        "text_embeds",
    ),
    "siglip-text": (
        "SiglipTextModel",
        "SiglipTextConfig",
        {**TEXT, "projection_size": 3},
        "pooler_output",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PROJECTED))
def test_clip_shaped_encoder_with_its_projection_as_task_head_masked_equals_compacted(name):
    torch.manual_seed(0)
    model, config, options, output = PROJECTED[name]
    encoder = getattr(transformers, model)(getattr(transformers, config)(**options))
    text = "Text" in model
    wrapped = Output(encoder, "input_ids" if text else "pixel_values", output).eval()
    assert describe(wrapped).name == "clip"

    def inputs() -> torch.Tensor:
        return torch.randint(1, 40, (2, 6)) if text else torch.randn(2, 3, 32, 32)

    _, adapted, x, y = adapted_after_step(wrapped, inputs)
    groups = channel_groups(adapted, x, units=("heads", "ffn", "hidden"))
    scores = score(adapted, "taylor", groups, data=[(x, y)])
    masks = compute_masks(groups, scores, 0.5, ranking="local", round_to={"hidden": 4})
    apply_masks(adapted, masks)
    assert any(sum(g.kept) < g.size for g in refresh_groups(adapted, groups) if g.unit == "hidden")
    with torch.no_grad():
        assert_close_scaled(compact(copy.deepcopy(adapted), x)(x), adapted(x))


def _siglip_with_pooling_head() -> tuple[nn.Module, callable]:
    config = transformers.SiglipConfig(
        vision_config={**VISION, "vision_use_head": True}, num_labels=3
    )
    model = transformers.SiglipForImageClassification(config)
    assert hasattr(model.vision_model, "head")
    return model, lambda: torch.randn(2, 3, 32, 32)


class _Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def test_siglip_pooling_head_refuses_the_hidden_size_naming_it_and_keeps_heads_and_ffn():
    torch.manual_seed(0)
    model, inputs = _siglip_with_pooling_head()
    _, adapted, x, _ = adapted_after_step(_Logits(model.eval()), inputs)
    refusal = r"vision_model\.head\.attention .*units=\('heads', 'ffn'\)"
    with pytest.raises(ConfigError, match=refusal):
        channel_groups(adapted, x, units=("hidden",))
    groups = channel_groups(adapted, x, units=("heads", "ffn"))
    # The blocks' heads and FFN neurons: 2 layers x (heads, ffn); none in the pooling head.
    assert sorted(g.unit for g in groups) == ["ffn", "ffn", "heads", "heads"]


class _TwoTowers(nn.Module):
    """CLIPModel scoring images against three fixed captions (the logits per image)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("captions", torch.randint(1, 40, (3, 6)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=self.captions, pixel_values=x).logits_per_image


@pytest.mark.slow
def test_clip_model_prunes_each_towers_hidden_size_as_its_own_stream(tmp_path):
    """Both towers (equal widths) pruned on heads, FFN and hidden size: one hidden group per
    tower, each projection's input columns following its own tower; masked == compacted ==
    fused == loaded bundle == TaskHost."""
    torch.manual_seed(0)
    config = transformers.CLIPConfig(vision_config=VISION, text_config=TEXT, projection_dim=8)
    wrapped = _TwoTowers(transformers.CLIPModel(config)).eval()
    assert describe(wrapped).name == "clip"
    base, model, x, y = adapted_after_step(wrapped, lambda: torch.randn(2, 3, 32, 32))
    groups = channel_groups(model, x, units=("heads", "ffn", "hidden"))
    hidden = [g for g in groups if g.unit == "hidden"]
    towers = [{m.name.split(".")[1] for m in g.members} for g in hidden]
    assert towers == [{"text_model", "text_projection"}, {"vision_model", "visual_projection"}]
    scores = score(model, "taylor", groups, data=[(x, y)])
    apply_masks(model, compute_masks(groups, scores, 0.5, ranking="local", round_to={"hidden": 4}))
    groups = refresh_groups(model, groups)
    kept = [sum(g.kept) for g in groups if g.unit == "hidden"]
    assert all(k < 32 for k in kept)
    with torch.no_grad():
        masked = model(x)
    compacted = assert_deploys(model, base, x, masked, tmp_path / "task.safetensors")
    projections = compacted.model.text_projection, compacted.model.visual_projection
    assert [getattr(p, "base", p).weight.shape[1] for p in projections] == kept
