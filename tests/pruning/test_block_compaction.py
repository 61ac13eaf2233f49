from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForQuestionAnswering

from spa import SPLoPAConfig, adapt
from spa.adapters.block_fine_pruning import block_prunable_layers, wrap_block_fine_pruning
from spa.errors import UnsupportedLayerError
from spa.pruning.block_compaction import NoAttentionHeads, compact_bert, count_flops
from spa.pruning.block_criteria import create_block_criterion
from spa.pruning.gradual import GradualBlockPruner, GradualPruningConfig

PROJECTIONS = (
    r"(query|key|value|attention\.output\.dense|intermediate\.dense|layer\.\d+\.output\.dense)$"
)
CRITERION_OPTIONS = {
    "magnitude": {},
    "movement": {"score_learning_rate": 1.0},
    "soft_movement": {"penalty_weight": 50.0, "score_learning_rate": 1.0, "threshold": 0.45},
    "l0": {"penalty_weight": 50.0, "score_learning_rate": 1.0, "initial_log_alpha": 0.3},
}


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny models run faster on one thread; a shared CPU makes thread hand-offs costly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_bert() -> BertForQuestionAnswering:
    config = BertConfig(
        vocab_size=40,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,  # head size 32: one 32 x 32 block row per head
        intermediate_size=128,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForQuestionAnswering(config)


def _splopa_bert() -> BertForQuestionAnswering:
    config = SPLoPAConfig(
        block_shape=(32, 32), num_prototypes=4, init_range=0.05, target_modules=PROJECTIONS
    )
    return adapt(_tiny_bert(), config)


def _batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 40, (3, 16))
    positions = torch.randint(0, 16, (3,))
    return {"input_ids": ids, "start_positions": positions, "end_positions": positions}


def _outputs(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        output = model(input_ids=input_ids)
    return torch.stack([output.start_logits, output.end_logits])


def _prune(model: nn.Module, name: str, config: GradualPruningConfig, steps: int):
    pruner = GradualBlockPruner(
        model, create_block_criterion(name, **CRITERION_OPTIONS[name]), config
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = _batch()
    for _ in range(steps):
        loss = model(**batch).loss + pruner.penalty()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        pruner.step()
    return pruner


def _expected_heads(model: nn.Module, layer_index: int) -> int:
    """Heads whose value rows and attention-output columns both keep a block."""
    prefix = f"bert.encoder.layer.{layer_index}.attention"
    value = model.get_submodule(f"{prefix}.self.value").block_mask  # (2 heads, 2)
    output = model.get_submodule(f"{prefix}.output.dense").block_mask  # (2, 2 heads)
    return int((value.any(dim=1) & output.any(dim=0)).sum())


def _fine_pruning_bert() -> BertForQuestionAnswering:
    return wrap_block_fine_pruning(_tiny_bert(), (32, 32), target_modules=PROJECTIONS)


@pytest.mark.parametrize("make_model", [_splopa_bert, _fine_pruning_bert], ids=["splopa", "fine"])
@pytest.mark.parametrize("name", ["magnitude", "movement", "soft_movement", "l0"])
def test_criterion_on_tiny_bert_compacts_exactly(name: str, make_model) -> None:
    model = make_model()
    config = GradualPruningConfig(final_density=0.25, warmup_steps=1, pruning_steps=2)
    pruner = _prune(model, name, config, steps=4)
    masks = pruner.finish()
    if pruner.criterion.is_thresholded:
        # density is an outcome: the mask is exactly the criterion's threshold rule
        rule = pruner.criterion.masks(0.0)
        assert all(torch.equal(mask, rule[layer_name]) for layer_name, mask in masks.items())
    else:
        for layer_name, mask in masks.items():
            assert int(mask.sum()) == round(0.25 * mask.numel()), layer_name
    assert pruner.density() == pytest.approx(
        sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    )
    input_ids = torch.randint(0, 40, (2, 16))
    expected = _outputs(model, input_ids)
    compacted, report = compact_bert(model, sequence_length=16)
    torch.testing.assert_close(_outputs(compacted, input_ids), expected, atol=1e-5, rtol=1e-5)
    for index in range(2):
        attention = compacted.bert.encoder.layer[index].attention.self
        heads = _expected_heads(model, index)
        if heads == 0:
            assert isinstance(attention, NoAttentionHeads)
        else:
            assert attention.num_attention_heads == heads
            assert attention.query.out_features == 32 * heads
    assert report.parameters_after <= report.parameters_before
    assert report.flops_after <= report.flops_before


def test_topk_criterion_at_quarter_density_removes_a_head_per_layer() -> None:
    model = _splopa_bert()
    config = GradualPruningConfig(final_density=0.25, warmup_steps=0, pruning_steps=1)
    pruner = _prune(model, "magnitude", config, steps=1)
    pruner.finish()
    # 1 of 4 value blocks is kept, so at least one head has no value block left.
    compacted, report = compact_bert(model, sequence_length=16)
    for index in range(2):
        attention = compacted.bert.encoder.layer[index].attention.self
        assert isinstance(attention, NoAttentionHeads) or attention.num_attention_heads == 1
    assert sum(len(heads) for heads in report.removed_heads.values()) >= 2
    assert report.parameters_after < report.parameters_before
    assert report.flops_after < report.flops_before


def _set_mask(model: nn.Module, path: str, mask: list[list[bool]]) -> None:
    model.get_submodule(path).block_mask.copy_(torch.tensor(mask))


def test_compact_bert_removes_heads_and_neurons_by_hand() -> None:
    model = _splopa_bert()
    with torch.no_grad():  # a non-zero adapter, so the fused weight differs from the base
        for _, layer in block_prunable_layers(model):
            layer.block_weights.normal_()
    layer0 = "bert.encoder.layer.0"
    _set_mask(model, f"{layer0}.attention.self.value", [[False, False], [True, True]])  # head 0
    _set_mask(model, f"{layer0}.attention.output.dense", [[True, False], [True, False]])  # head 1
    _set_mask(
        model, f"{layer0}.intermediate.dense", [[True, True], [False, False]] + [[True] * 2] * 2
    )
    layer1 = "bert.encoder.layer.1"
    _set_mask(model, f"{layer1}.attention.self.query", [[False, False], [False, False]])
    _set_mask(model, f"{layer1}.attention.self.key", [[False, False], [False, False]])
    _set_mask(
        model, f"{layer1}.output.dense", [[False, True, True, True], [False, True, True, True]]
    )
    input_ids = torch.randint(0, 40, (2, 16))
    expected = _outputs(model, input_ids)
    compacted, report = compact_bert(model, sequence_length=16)
    torch.testing.assert_close(_outputs(compacted, input_ids), expected, atol=1e-5, rtol=1e-5)
    assert isinstance(compacted.bert.encoder.layer[0].attention.self, NoAttentionHeads)
    assert compacted.bert.encoder.layer[0].attention.output.dense.in_features == 0
    assert compacted.bert.encoder.layer[0].intermediate.dense.out_features == 128 - 32
    # Query/key all pruned does not make a head removable (its scores still depend on biases).
    assert compacted.bert.encoder.layer[1].attention.self.num_attention_heads == 2
    assert compacted.bert.encoder.layer[1].output.dense.in_features == 128 - 32
    assert report.removed_heads == {f"{layer0}.attention": [0, 1]}
    assert report.removed_neurons == {
        f"{layer0}.intermediate.dense": 32,
        f"{layer1}.intermediate.dense": 32,
    }
    removed = 3 * 64 * 64 + 64 * 64 + 2 * 32 * 64 * 2  # Q, K, V, O of layer 0; FFN neurons
    assert report.projection_parameters_after == report.projection_parameters_before - removed
    assert report.dense_fraction == pytest.approx(1 - removed / report.projection_parameters_before)


def test_compact_bert_on_block_fine_pruning() -> None:
    model = wrap_block_fine_pruning(_tiny_bert(), (32, 32), target_modules=PROJECTIONS)
    _set_mask(model, "bert.encoder.layer.1.attention.self.value", [[True, True], [False, False]])
    input_ids = torch.randint(0, 40, (2, 16))
    expected = _outputs(model, input_ids)
    compacted, report = compact_bert(model, sequence_length=16)
    torch.testing.assert_close(_outputs(compacted, input_ids), expected, atol=1e-5, rtol=1e-5)
    assert compacted.bert.encoder.layer[1].attention.self.num_attention_heads == 1
    assert report.removed_heads == {"bert.encoder.layer.1.attention": [1]}


def test_count_flops_counts_linear_layers() -> None:
    model = _tiny_bert()
    flops = count_flops(model, sequence_length=16)
    # per layer: 4 attention projections + 2 FFN matrices; plus the 2-output QA head
    linear = 2 * 16 * (2 * (4 * 64 * 64 + 2 * 64 * 128)) + 2 * 16 * 64 * 2
    attention = 2 * 2 * (2 * 16 * 16 * 64)  # Q K^T and P V per layer
    assert flops == linear + attention


def test_compact_bert_rejects_non_bert_models() -> None:
    with pytest.raises(UnsupportedLayerError, match="no BERT-style encoder layer"):
        compact_bert(nn.Sequential(nn.Linear(4, 4)))
