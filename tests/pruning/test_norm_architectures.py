"""Norms that mix channels, on real architectures (issue 21, item 7): with every criterion the
masked model equals its compacted form, or the group holding the norm is left out with a
`SpaWarning` (or the model refused in one line) before any mask is applied.

Rows: Swin through its family (hidden size; the patch-merge LayerNorm normalises 4 copies of the
stage's channels side by side), and on the traced path MaskFormer-Swin (the same merge, which
Torch-Pruning mis-traces), SegFormer (LayerNorms over each stage), ConvNeXt (LayerNorm over the
channel axis of a feature map, 64 channels so the kept ones spread), PoolFormer (GroupNorm(1, C)
normalises over channels and space together) and Swin-V2 / Donut-Swin (whose graph Torch-Pruning
does not settle on).
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
import transformers

import spa
from spa.errors import SpaWarning, UnsupportedLayerError
from spa.families import FAMILIES
from spa.pruning import apply_masks, channel_groups, compact, compute_masks, score
from spa.pruning.criteria import CRITERIA
from tests._transformers import Net, adapted_after_step, assert_close_scaled

SIZE = 32  # image side
SWIN = {
    "image_size": SIZE,
    "patch_size": 4,
    "embed_dim": 16,
    "depths": [2, 2],
    "num_heads": [2, 4],
    "window_size": 2,
}


class Pooled(Net):
    """An image model's logits, or its pooled features for a bare backbone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        return out.logits if hasattr(out, "logits") else out.pooler_output


def _model(model_class: str, config_class: str, **options) -> Callable[[], Net]:
    def build() -> Net:
        config = getattr(transformers, config_class)(**options)
        return Pooled(getattr(transformers, model_class)(config), "image").eval()

    return build


def _swin_family() -> Net:
    example = FAMILIES.get("swin").examples[0]  # the family's own tiny sizes
    return _model(example.model, example.config, **example.options)()


@dataclass(frozen=True)
class Row:
    """One architecture and what spa does with its norms.

    Args:
        name: test id.
        build: the tiny model (random init).
        units: the described units to prune; None = the traced path.
        norms: a pattern some pruned group's norm member matches (the check is not vacuous).
        left_out: patterns each of which a `SpaWarning` at `channel_groups` matches (groups
            left out for a norm; others may be left out for other reasons).
        refused: a pattern the one-line `UnsupportedLayerError` matches (nothing pruned).
    """

    name: str
    build: Callable[[], Net]
    units: tuple[str, ...] | None = None
    norms: str | None = None
    left_out: tuple[str, ...] = field(default_factory=tuple)
    refused: str | None = None


ROWS = [
    # 4 of 16 hidden channels kept in stage 0: 16 of the merge norm's 64, spread (the bug).
    Row("swin", _swin_family, ("hidden",), norms=r"downsample\.norm$"),
    Row(
        "maskformer-swin",
        _model("MaskFormerSwinModel", "MaskFormerSwinConfig", **SWIN),
        # The stage-0 stream: Torch-Pruning maps the merge's strided token slices to channel
        # positions, so the merge norm and reduction would lose other channels than the stream.
        left_out=(
            r"layers\.0\.blocks\.1\.output\.dense .* in model\.encoder\.layers\.0\."
            r"downsample\.norm:",
        ),
    ),
    Row(
        "segformer",
        _model(
            "SegformerForImageClassification",
            "SegformerConfig",
            num_encoder_blocks=2,
            depths=[1, 1],
            sr_ratios=[2, 1],
            hidden_sizes=[16, 64],
            patch_sizes=[7, 3],
            strides=[4, 2],
            num_attention_heads=[1, 2],
            mlp_ratios=[2, 2],
            decoder_hidden_size=16,
            num_labels=3,
        ),
        left_out=(r"stages\.0\.blocks\.0\.mlp\.fc2", r"stages\.1\.blocks\.0\.mlp\.fc2"),
    ),
    Row(
        "convnext",
        _model(
            "ConvNextForImageClassification",
            "ConvNextConfig",
            hidden_sizes=[16, 64],
            depths=[1, 1],
            num_stages=2,
            num_labels=3,
            image_size=SIZE,
        ),
        norms=r"downsampling_layer\.0$",  # a channels-first LayerNorm
    ),
    Row(
        "poolformer",
        _model(
            "PoolFormerForImageClassification",
            "PoolFormerConfig",
            hidden_sizes=[16, 64],
            depths=[1, 1],
            num_encoder_blocks=2,
            patch_sizes=[7, 3],
            strides=[4, 2],
            padding=[2, 1],
            layer_scale_init_value=1.0,  # else the MLP's output is scaled by 1e-5
            num_labels=3,
        ),
        left_out=(
            r"block\.0\.0\.output\.conv2 .*before_norm \(PoolFormerGroupNorm",
            r"block\.1\.0\.output\.conv2 .*model\.norm \(PoolFormerGroupNorm",
        ),
    ),
    Row(
        "swinv2",
        _model("Swinv2ForImageClassification", "Swinv2Config", num_labels=3, **SWIN),
        refused="'swinv2' model",
    ),
    Row(
        "donut-swin",
        _model("DonutSwinForImageClassification", "DonutSwinConfig", num_labels=3, **SWIN),
        refused="'donut-swin' model",
    ),
]


def _groups(row: Row, model, x):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        groups = channel_groups(model, x, units=row.units, time_limit=2.0)
    messages = [str(w.message) for w in caught if issubclass(w.category, SpaWarning)]
    for pattern in row.left_out:
        assert any(re.search(pattern, message) for message in messages), (pattern, messages)
    assert groups  # the rest is pruned
    return groups


@pytest.mark.slow
@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_norms_mixing_channels_compact_into_the_masked_model_or_are_left_out(row):
    torch.manual_seed(0)
    _, model, x, y = adapted_after_step(row.build(), lambda: torch.randn(2, 3, SIZE, SIZE))
    if row.refused is not None:
        with pytest.raises(UnsupportedLayerError, match=re.escape(row.refused)) as caught:
            channel_groups(model, x, time_limit=2.0)
        assert "\n" not in str(caught.value)
        assert all(bool(layer.out_mask.all()) for _, layer in spa.adapter_layers(model))
        return
    groups = _groups(row, model, x)
    with torch.no_grad():
        dense = model(x)
    for criterion in CRITERIA.names():
        masked_model = copy.deepcopy(model)
        scores = score(masked_model, criterion, groups, data=[(x, y)])
        round_to = {"hidden": 4} if row.units else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SpaWarning)  # density overshoot of tiny groups
            masks = compute_masks(groups, scores, 0.3, ranking="local", round_to=round_to)
        apply_masks(masked_model, masks)
        with torch.no_grad():
            masked = masked_model(x)
            assert not torch.allclose(masked, dense, atol=1e-5), criterion
            compacted = compact(copy.deepcopy(masked_model), x)
            assert_close_scaled(compacted(x), masked)
        if row.norms is not None:  # the norms matching `row.norms` lost channels
            norms = {
                member.name
                for group in groups
                for member in group.members
                if member.role == "norm" and re.search(row.norms, member.name)
            }
            assert norms, row.norms
            for name in norms:
                width = compacted.get_submodule(name).weight.shape[-1]
                assert width < model.get_submodule(name).weight.shape[-1], (criterion, name)
