"""dParams against DESIGN §2's formulas, computed independently in the tests."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import spa
from spa.models.resnet import resnet50

BERT_PROJECTIONS = (
    r"encoder\.layer\.\d+\.(attention\.(self\.(query|key|value)|output\.dense)"
    r"|intermediate\.dense|output\.dense)$"
)


@pytest.mark.parametrize("rank,paper", [(8, 466_338), (32, 1_644_522)])
def test_resnet50_splora_full_density_is_the_paper_count_less_the_stem_s_unusable_ranks(
    rank, paper
):
    # The paper counts rank r on the 7x7 stem too, whose adapter (at the centre tap) is a 64 x 3
    # matrix: it holds rank 3 at most, so spa gives the stem rank 3 (issue 24).
    model = resnet50(num_classes=10)
    spa.adapt(model, spa.SPLoRAConfig(rank=rank))
    assert len(model.spa_report.adapted) == 53
    assert model.spa_report.capped_ranks == {"conv1": 3}
    assert spa.count_learned_parameters(model) == paper - (rank - 3) * (64 + 3)


@pytest.mark.parametrize("rank,paper", [(8, 466_338), (32, 1_644_522)])
def test_resnet50_splora_uncapped_is_the_paper_count(rank, paper):
    # DESIGN §2's check: with cap_rank=False every conv, the 64 x 3 stem included, gets rank r.
    model = resnet50(num_classes=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is capped, so nothing is warned
        spa.adapt(model, spa.SPLoRAConfig(rank=rank, cap_rank=False))
    assert model.spa_report.capped_ranks == {}
    assert model.get_submodule("conv1").rank == rank
    assert spa.count_learned_parameters(model) == paper


def test_resnet50_splora_count_matches_formula_sum():
    model = resnet50(num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    norms = sum(2 * m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    adapters = sum(
        min(8, c.out_channels, c.in_channels // c.groups) * (c.out_channels + c.in_channels)
        for c in convs
    )
    formula = adapters + norms + 2048 * 10 + 10
    spa.adapt(model, spa.SPLoRAConfig(rank=8))
    assert spa.count_learned_parameters(model) == formula


def test_masked_splora_count_is_r_times_kept_rows_plus_columns():
    model = nn.Sequential(nn.Linear(10, 12), nn.Linear(12, 6), nn.Linear(6, 2))
    spa.adapt(model, spa.SPLoRAConfig(rank=3, trainable=("head", "bias")))
    model[0].out_mask[:5] = False
    model[0].in_mask[:2] = False
    model[1].in_mask[:5] = False
    expected_adapter = 3 * ((12 - 5) + (10 - 2)) + 3 * (6 + (12 - 5))
    expected_bias = (12 - 5) + 6  # trained biases of kept rows
    expected_head = 6 * 2 + 2
    counted = spa.learned_parameters(model)
    assert counted.by_kind["adapter"] == expected_adapter
    assert counted.by_kind["bias"] == expected_bias
    assert counted.total == expected_adapter + expected_bias + expected_head


def test_fine_pruning_count_is_retained_weights():
    model = nn.Sequential(
        nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Flatten(), nn.Linear(6 * 4 * 4, 3)
    )
    spa.adapt(model, spa.FinePruningConfig())
    model[0].out_mask[:2] = False
    model[0].in_mask[:1] = False
    expected = (6 - 2) * (4 - 1) * 9 + (6 - 2) + 12 + (96 * 3 + 3)
    assert spa.count_learned_parameters(model) == expected
    plain = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 3)
    )
    assert spa.count_learned_parameters(plain) == sum(p.numel() for p in plain.parameters())


def test_bert_base_splopa_at_60_percent_blocks_matches_paper():
    from transformers import BertConfig, BertForQuestionAnswering

    model = BertForQuestionAnswering(BertConfig())  # BERT-base sized, random init, no download
    config = spa.SPLoPAConfig(
        block_shape=(32, 32),
        num_prototypes=128,
        prototype_rank=1,
        target_modules=BERT_PROJECTIONS,
        trainable=("norm", "head", "bias"),
    )
    spa.adapt(model, config)
    layers = list(spa.adapter_layers(model))
    assert len(layers) == 72
    expected_adapter = 0
    for _, layer in layers:
        blocks = layer.block_mask.numel()
        kept = round(0.6 * blocks)
        order = torch.randperm(blocks)
        layer.block_mask.view(-1)[order[kept:]] = False
        expected_adapter += 128 * kept + 128 * 1 * (32 + 32)
    counted = spa.learned_parameters(model)
    assert counted.by_kind["adapter"] == expected_adapter
    assert abs(counted.by_kind["adapter"] - 6.96e6) / 6.96e6 < 0.002
    norms = sum(p.numel() for n, p in model.named_parameters() if "LayerNorm" in n)
    assert counted.by_kind["norm"] == norms
    assert counted.by_kind["head"] == 768 * 2 + 2
    biases = sum(
        p.numel()
        for n, p in model.named_parameters()
        if n.endswith(".bias") and "LayerNorm" not in n and "qa_outputs" not in n
    )
    assert counted.by_kind["bias"] == biases
    assert counted.total == sum(counted.by_kind.values())


def test_shared_prototypes_counted_once():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2))
    spa.adapt(
        model,
        spa.SPLoPAConfig(
            block_shape=(4, 4),
            num_prototypes=3,
            prototype_rank=2,
            shared_prototypes=True,
            trainable=(),
        ),
    )
    assert spa.count_learned_parameters(model) == 2 * 3 * 4 + 3 * 2 * (4 + 4)
