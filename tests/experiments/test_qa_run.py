"""The runner's question-answering path on a tiny local BERT and tiny SQuAD files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForQuestionAnswering,
    BertConfig,
    BertForQuestionAnswering,
    BertTokenizerFast,
)

from spa.data.squad import read_squad
from spa.errors import ConfigError
from spa.experiments.config import from_dict
from spa.experiments.runner import run
from spa.qa import evaluate_qa
from spa.tasks import load_task

WORDS = "the cat sat on mat where did a dog run in park who ? . big red what color is sky blue"
PARAGRAPHS = [
    ("the cat sat on the mat .", "where did the cat sit ?", "the mat"),
    ("a dog run in the park .", "where did a dog run ?", "the park"),
    ("the sky is blue .", "what color is the sky ?", "blue"),
    ("the big red dog sat .", "what color is the dog ?", "red"),
]


def _squad(path: Path) -> None:
    paragraphs = [
        {
            "context": context,
            "qas": [
                {
                    "id": f"q{index}",
                    "question": question,
                    "answers": [{"text": answer, "answer_start": context.index(answer)}],
                }
            ],
        }
        for index, (context, question, answer) in enumerate(PARAGRAPHS)
    ]
    data = {"version": "1.1", "data": [{"title": "tiny", "paragraphs": paragraphs}]}
    path.write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture
def qa_files(tmp_path: Path) -> tuple[Path, Path]:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS.split()]
    tokenizer = BertTokenizerFast(vocab={token: index for index, token in enumerate(vocab)})
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model_dir = tmp_path / "bert"
    BertForQuestionAnswering(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data_dir = tmp_path / "squad"
    data_dir.mkdir()
    _squad(data_dir / "train-v1.1.json")
    _squad(data_dir / "dev-v1.1.json")
    return model_dir, data_dir


def _config(model_dir: Path, data_dir: Path, kind: str, criterion: str = "magnitude") -> dict:
    adapter = {"kind": kind, "block_shape": [16, 16]}
    if kind == "splopa":
        adapter["num_prototypes"] = 2
    return {
        "name": "qa",
        "model": {"name": "transformers", "path": str(model_dir), "head": "qa_outputs"},
        "data": {
            "name": "squad",
            "root": str(data_dir),
            "options": {"max_length": 24, "doc_stride": 8},
            "train_split": "train",
            "eval_split": "val",
            "batch_size": 2,
        },
        "adapter": adapter,
        "pruning": {"criterion": criterion, "schedule": "gradual", "target_density": 0.5},
        "train": {"initial_epochs": 1, "epochs_per_step": 1, "optimizer": "adamw", "lr": 0.01},
    }


@pytest.mark.slow
def test_qa_run_splopa_prunes_evaluates_and_bundles(qa_files, tmp_path: Path) -> None:
    model_dir, data_dir = qa_files
    config = from_dict(_config(model_dir, data_dir, "splopa"))
    result = run(config, tmp_path / "run")
    (record,) = result.records
    assert record["density"] == pytest.approx(0.5)
    assert record["metric_name"] == "f1" and "accuracy" not in record  # F1 is not accuracy
    assert record["metric"] == pytest.approx(record["f1"] / 100)
    assert record["method"] == "SPLoPA R2 16x16" and record["task"] == "squad"
    base = AutoModelForQuestionAnswering.from_pretrained(model_dir).eval()
    task = load_task(base, result.run_dir / "seed-0" / record["bundle"])
    tokenizer = BertTokenizerFast.from_pretrained(model_dir)
    examples = read_squad(data_dir / "dev-v1.1.json")
    evaluation = evaluate_qa(task, tokenizer, examples, max_length=24, doc_stride=8)
    assert evaluation.f1 == pytest.approx(record["f1"])
    assert "| squad | SPLoPA R2 16x16 | magnitude | 50.0 |" in result.report.markdown.read_text()
    again = run(config, tmp_path / "run")  # a finished seed is not retrained
    assert again.records == result.records


@pytest.mark.slow
def test_qa_run_block_fine_pruning(qa_files, tmp_path: Path) -> None:
    model_dir, data_dir = qa_files
    torch.manual_seed(0)
    config = from_dict(_config(model_dir, data_dir, "block_fine_pruning", criterion="movement"))
    (record,) = run(config, tmp_path / "run").records
    assert record["method"] == "Fine-pruning"
    assert record["density"] == pytest.approx(0.5)
    assert (tmp_path / "run" / "seed-0" / record["bundle"]).stat().st_size > 0


def test_qa_run_rejects_channel_method(qa_files, tmp_path: Path) -> None:
    model_dir, data_dir = qa_files
    data = _config(model_dir, data_dir, "splopa", criterion="taylor")
    data["adapter"] = {"kind": "splora"}
    data["pruning"]["schedule"] = "iterative"
    with pytest.raises(ConfigError, match=r"'adapter\.kind' = 'splora': not supported for quest"):
        run(from_dict(data), tmp_path / "run")


def test_qa_run_rejects_unknown_option(qa_files, tmp_path: Path) -> None:
    model_dir, data_dir = qa_files
    data = _config(model_dir, data_dir, "splopa")
    data["data"]["options"]["stride"] = 4
    with pytest.raises(ConfigError, match=r"'data\.options\.stride': unknown"):
        run(from_dict(data), tmp_path / "run")
