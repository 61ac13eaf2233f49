"""The extractive-QA task type's checks, and its block-pruned models bundle exactly."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import BertConfig, BertForQuestionAnswering

from spa.adapters import ADAPTER_KINDS
from spa.adapters.protocols import block_prunable_layers
from spa.deploy import compacted
from spa.experiments.build import adapt_model
from spa.experiments.config import from_dict
from spa.experiments.task_types import TASK_TYPES, unsupported_reason
from spa.tasks import load_task, save_task

QA = TASK_TYPES.get("extractive-qa")


def _config(**sections):
    data = {
        "model": {"name": "transformers", "path": "bert", "head": "qa_outputs"},
        "data": {"name": "squad", "root": "squad"},
        "adapter": {"kind": "splopa", "block_shape": [8, 8]},
        "pruning": {"criterion": "magnitude", "schedule": "gradual"},
    }
    for key, values in sections.items():
        data[key] = values if key == "adapter" else {**data[key], **values}
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
    assert unsupported_reason(QA, _config()) is None


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        (
            {"adapter": {"kind": "splora"}, "pruning": {"criterion": "taylor"}},
            "'adapter.kind' = 'splora': not supported for question answering",
        ),
        ({"pruning": {"schedule": "iterative"}}, "'pruning.schedule' = 'iterative'"),
        ({"data": {"options": {"stride": 2}}}, "'data.options.stride': unknown"),
        ({"model": {"name": "resnet18"}}, "'model.name': data.name = 'squad' needs"),
        ({"data": {"root": None}}, "'data.root'"),
    ],
)
def test_refuses_what_it_cannot_run_naming_the_key(sections: dict, message: str) -> None:
    config = _config(**sections)
    assert message in unsupported_reason(QA, config)


BLOCK_KINDS = [n for n in ADAPTER_KINDS.names() if ADAPTER_KINDS.get(n).pruning == "block"]


@pytest.mark.parametrize("kind", BLOCK_KINDS)
def test_prepared_block_pruned_model_round_trips_through_a_bundle(kind: str, tmp_path) -> None:
    base = _bert()
    fields = {f.name for f in dataclasses.fields(ADAPTER_KINDS.get(kind).config_type)}
    adapter = {"kind": kind, **({"block_shape": [8, 8]} if "block_shape" in fields else {})}
    model = adapt_model(_bert(), _config(adapter=adapter))
    model.load_state_dict(base.state_dict(), strict=False)  # same base weights
    layers = list(block_prunable_layers(model))
    assert len(layers) == 6  # q, k, v, attention output, intermediate, output
    for _, layer in layers:
        layer.block_mask.copy_(torch.rand(layer.block_mask.shape) < 0.6)
    model.eval()
    save_task(compacted(model), tmp_path / "task.safetensors", base_model=base)
    loaded = load_task(base, tmp_path / "task.safetensors").eval()
    inputs = torch.randint(0, 30, (2, 12))
    with torch.no_grad():
        expected, actual = model(input_ids=inputs), loaded(input_ids=inputs)
    torch.testing.assert_close(actual.start_logits, expected.start_logits)
    torch.testing.assert_close(actual.end_logits, expected.end_logits)
