"""The extractive-QA task type's checks and its deployable model (block fine-pruning fused)."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForQuestionAnswering

from spa.adapters import SPLoPAConfig, adapt, adapter_layers
from spa.adapters.block_fine_pruning import block_prunable_layers, wrap_block_fine_pruning
from spa.experiments.config import from_dict
from spa.experiments.task_types import TASK_TYPES
from spa.experiments.task_types.extractive_qa import deployable

QA = TASK_TYPES.get("extractive-qa")


def _config(**sections):
    data = {
        "model": {"name": "transformers", "path": "bert", "head": "qa_outputs"},
        "data": {"name": "squad", "root": "squad"},
        "adapter": {"method": "splopa", "block_shape": [8, 8]},
        "pruning": {"criterion": "magnitude", "schedule": "gradual"},
    }
    for key, values in sections.items():
        data[key] = {**data[key], **values}
    return from_dict(data)


def _bert() -> BertForQuestionAnswering:
    config = BertConfig(
        vocab_size=30,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    return BertForQuestionAnswering(config).eval()


def test_accepts_a_block_pruning_config() -> None:
    assert QA.unsupported_reason(_config()) is None


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"adapter": {"method": "splora"}, "pruning": {"criterion": "taylor"}}, "adapter.method"),
        ({"pruning": {"schedule": "iterative"}}, "'pruning.schedule' = 'iterative'"),
        ({"data": {"options": {"stride": 2}}}, "'data.options.stride': unknown"),
        ({"model": {"name": "resnet18"}}, "'model.name': data.name = 'squad' needs"),
        ({"data": {"root": None}}, "'data.root'"),
    ],
)
def test_refuses_what_it_cannot_run_naming_the_key(sections: dict, message: str) -> None:
    config = _config(**sections)
    assert message in QA.unsupported_reason(config)


def _masked_at_random(model: torch.nn.Module) -> None:
    for _, layer in block_prunable_layers(model):
        layer.block_mask.copy_(torch.rand(layer.block_mask.shape) < 0.6)


def test_deployable_fuses_block_fine_pruning_layers_with_the_same_outputs() -> None:
    model = wrap_block_fine_pruning(_bert(), (8, 8), target_modules=r"encoder")
    _masked_at_random(model)
    model.eval()
    result = deployable(model)
    assert list(block_prunable_layers(result)) == []  # plain nn.Linear layers now
    assert len(list(block_prunable_layers(model))) == 6  # the trained model is untouched
    inputs = torch.randint(0, 30, (2, 12))
    with torch.no_grad():
        expected, actual = model(input_ids=inputs), result(input_ids=inputs)
    torch.testing.assert_close(actual.start_logits, expected.start_logits)
    torch.testing.assert_close(actual.end_logits, expected.end_logits)


def test_deployable_keeps_splopa_adapters_for_the_bundle() -> None:
    model = adapt(_bert(), SPLoPAConfig(block_shape=(8, 8), num_prototypes=2))
    result = deployable(model)
    assert [name for name, _ in adapter_layers(result)] == [
        name for name, _ in adapter_layers(model)
    ]
