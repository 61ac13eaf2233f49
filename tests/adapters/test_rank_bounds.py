"""Each adapted layer's rank is at most its width, min(out, in/groups) (issue 24): a wider rank
is capped with one warning, refused when it exceeds every layer, and counted as capped."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import spa
from spa.errors import ConfigError, RankError, SpaWarning
from spa.models import create_model


def _net() -> nn.Module:
    # Matrices: conv 8 x 4 (out x in), fc1 5 x 8, head 3 x 5 (never adapted).
    return nn.Sequential(nn.Conv2d(4, 8, 3), nn.Flatten(), nn.Linear(8, 5), nn.Linear(5, 3))


class _Mixed(nn.Module):
    """Layers of different widths: a 3-channel stem, a depth-wise and a grouped conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)  # 8 x 3
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # 8 x 1
        self.grouped = nn.Conv2d(8, 16, 3, padding=1, groups=2)  # 16 x 4
        self.wide = nn.Conv2d(16, 16, 1)  # 16 x 16
        self.fc = nn.Linear(16, 2)  # the head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.wide(self.grouped(self.depthwise(self.stem(x).relu()).relu()).relu())
        return self.fc(x.mean(dim=(2, 3)))


# min(rank 6, out, in/groups) of each layer, from the shapes above.
MIXED_RANKS = {"stem": 3, "depthwise": 1, "grouped": 4, "wide": 6}


def test_each_layer_gets_the_rank_or_its_width_with_one_warning_naming_the_capped():
    model = _Mixed()
    with pytest.warns(SpaWarning) as caught:
        spa.adapt(model, spa.SPLoRAConfig(rank=6))
    assert len(caught) == 1
    assert "on 3 of 4 adapted layer(s): stem (6 -> 3), depthwise (6 -> 1), grouped (6 -> 4)" in (
        str(caught[0].message)
    )
    assert {name: layer.rank for name, layer in spa.adapter_layers(model)} == MIXED_RANKS
    assert model.spa_report.capped_ranks == {"stem": 3, "depthwise": 1, "grouped": 4}
    assert "rank capped at depthwise's width: 1" in model.spa_report.summary()


def test_a_rank_within_every_width_warns_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpaWarning)
        model = spa.adapt(_Mixed(), spa.SPLoRAConfig(rank=1))
    assert model.spa_report.capped_ranks == {}


def test_the_warning_names_five_layers_and_counts_the_rest():
    narrow = [nn.Linear(8, 2) for _ in range(7)]  # width 2; not chained: adapt runs no forward
    model = nn.Sequential(*narrow, nn.Linear(16, 16), nn.Linear(16, 1))
    with pytest.warns(SpaWarning) as caught:
        spa.adapt(model, spa.SPLoRAConfig(rank=16, trainable=()))
    named = ", ".join(f"{i} (16 -> 2)" for i in range(5))
    assert str(caught[0].message).endswith(f"on 7 of 8 adapted layer(s): {named} and 2 more")


def test_the_cap_loses_no_capacity_the_capped_update_has_full_rank():
    model = spa.adapt(_Mixed(), spa.SPLoRAConfig(rank=6))
    for name, layer in spa.adapter_layers(model):
        matrix = layer.down.detach().double() @ layer.up.detach().double()  # (out, in/groups)
        assert torch.linalg.matrix_rank(matrix) == MIXED_RANKS[name]


def test_learned_parameters_follow_the_capped_ranks():
    model = spa.adapt(_Mixed(), spa.SPLoRAConfig(rank=6, trainable=("head",)))
    torch.manual_seed(3)
    kept = {}
    for name, layer in spa.adapter_layers(model):
        for mask in layer.masks().values():
            mask.copy_(torch.rand(mask.shape) < 0.6)
            mask[0] = True
        kept[name] = int(layer.out_mask.sum()) + int(layer.in_mask.sum())
    adapters = sum(MIXED_RANKS[name] * kept[name] for name in MIXED_RANKS)  # r_l (rows + cols)
    assert spa.count_learned_parameters(model) == adapters + 16 * 2 + 2


def test_a_rank_above_the_widest_layer_is_refused_naming_it():
    # Adapted: conv 8 x 4 (width 4) and fc1 5 x 8 (width 5); the head is not.
    spa.adapt(_net(), spa.SPLoRAConfig(rank=5))
    with pytest.raises(RankError, match=r"rank 6 exceeds .*the widest is '2' \(5 x 8: rank at"):
        spa.adapt(_net(), spa.SPLoRAConfig(rank=6))


def test_the_issue_case_rank_100000_is_refused_before_any_allocation():
    with pytest.raises(ConfigError, match="rank 100000 exceeds"):
        spa.adapt(_net(), spa.SPLoRAConfig(rank=100_000))


def _issue_base() -> nn.Module:
    # The issue's 44K-parameter base: the digits ResNet-18 at width 4 (one input channel).
    return create_model("resnet18", num_classes=2, small_input=True, width=4, in_channels=1)


def test_the_issue_case_rank_1000_on_the_44k_base_is_refused():
    with pytest.raises(RankError, match=r"rank 1000 exceeds .*\(32 x 32: rank at most 32\)"):
        spa.adapt(_issue_base(), spa.SPLoRAConfig(rank=1000))


def test_the_issue_base_at_its_widest_rank_learns_the_capped_count_less_than_fine_tuning():
    # Rank 32 (the widest layer's) used to learn 32 (out + in) on every conv, rank 32 on the
    # 4 x 1 stem too (17,978 in all). Now each layer learns min(32, out, in) (out + in) <= 2 out
    # in: at most twice what fine-tuning its matrix would, less than fine-tuning a 3 x 3 kernel.
    base = _issue_base()
    full_fine_tuning = sum(p.numel() for p in base.parameters())
    model = spa.adapt(base, spa.SPLoRAConfig(rank=32))
    learned = spa.learned_parameters(model)
    adapters = 0
    for _, module in spa.adapter_layers(model):
        rows, columns, *kernel = module.base.weight.shape
        count = min(32, rows, columns) * (rows + columns)
        assert count <= 2 * rows * columns
        if kernel == [3, 3]:
            assert count <= rows * columns * 9
        adapters += count
    assert learned.by_kind["adapter"] == adapters
    assert learned.total < full_fine_tuning


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("prototype_rank", 5, "prototype_rank 5 exceeds the width of a 4 x 8 block"),
        ("num_prototypes", 33, "num_prototypes 33 exceeds the 32 dimensions of a 4 x 8 block"),
    ],
)
def test_splopa_prototype_sizes_beyond_a_block_are_refused_naming_the_field(field, value, message):
    sizes = {"num_prototypes": 8, "prototype_rank": 1}
    spa.SPLoPAConfig(block_shape=(4, 8), **{**sizes, field: value - 1})
    with pytest.raises(ConfigError, match=message):
        spa.SPLoPAConfig(block_shape=(4, 8), **{**sizes, field: value})
