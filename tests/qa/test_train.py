from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForQuestionAnswering, BertTokenizerFast

from spa import SPLoPAConfig, adapt
from spa.data.squad import read_squad, squad_evaluate
from spa.deploy import compact_blocks
from spa.errors import ConfigError
from spa.pruning.block_criteria import MagnitudeCriterion
from spa.pruning.gradual import GradualBlockPruner, GradualPruningConfig
from spa.qa.train import QATrainingConfig, evaluate_qa, train_qa

WORDS = "the cat sat on mat where did a dog run in park who ? . big red what color is sky blue"
PARAGRAPHS = [
    ("the cat sat on the mat .", [("where did the cat sit ?", "the mat")]),
    ("a dog run in the park .", [("where did a dog run ?", "the park")]),
    ("the sky is blue .", [("what color is the sky ?", "blue")]),
    ("the big red dog sat .", [("what color is the dog ?", "red")]),
]


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny models run faster on one thread; a shared CPU makes thread hand-offs costly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _squad_file(path: Path) -> Path:
    paragraphs = []
    for index, (context, questions) in enumerate(PARAGRAPHS):
        qas = [
            {
                "id": f"q{index}",
                "question": question,
                "answers": [{"text": answer, "answer_start": context.index(answer)}],
            }
            for question, answer in questions
        ]
        paragraphs.append({"context": context, "qas": qas})
    data = {"version": "1.1", "data": [{"title": "tiny", "paragraphs": paragraphs}]}
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _tokenizer() -> BertTokenizerFast:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS.split()]
    return BertTokenizerFast(vocab={token: index for index, token in enumerate(vocab)})


def _model(vocab_size: int) -> BertForQuestionAnswering:
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForQuestionAnswering(config)


def test_evaluate_qa_scores_its_predictions_officially(tmp_path: Path) -> None:
    examples = read_squad(_squad_file(tmp_path / "dev.json"))
    tokenizer = _tokenizer()
    result = evaluate_qa(_model(len(tokenizer)), tokenizer, examples, max_length=24, doc_stride=8)
    assert set(result.predictions) == {"q0", "q1", "q2", "q3"}
    for example in examples:
        assert result.predictions[example.id] in example.context
    official = squad_evaluate(examples, result.predictions)
    assert (result.exact_match, result.f1) == (official["exact_match"], official["f1"])


def test_train_qa_with_splopa_and_pruner_reaches_scheduled_density(tmp_path: Path) -> None:
    examples = read_squad(_squad_file(tmp_path / "train.json"))
    tokenizer = _tokenizer()
    model = adapt(
        _model(len(tokenizer)),
        SPLoPAConfig(block_shape=(32, 32), num_prototypes=4, target_modules=r"encoder"),
    )
    schedule = GradualPruningConfig(final_density=0.5, warmup_steps=1, pruning_steps=2)
    pruner = GradualBlockPruner(model, MagnitudeCriterion(), schedule)
    config = QATrainingConfig(
        epochs=2, batch_size=2, learning_rate=1e-2, max_length=24, doc_stride=8
    )
    losses = train_qa(model, tokenizer, examples, config, pruner=pruner)
    assert len(losses) == 4  # 4 features / batch 2, two epochs
    assert pruner.step_count == 4
    assert pruner.density() == pytest.approx(0.5)


@pytest.mark.slow
def test_train_qa_fits_a_tiny_dataset(tmp_path: Path) -> None:
    examples = read_squad(_squad_file(tmp_path / "train.json"))
    tokenizer = _tokenizer()
    model = _model(len(tokenizer))
    config = QATrainingConfig(
        epochs=40,
        batch_size=4,
        learning_rate=3e-3,
        warmup_fraction=0.0,
        max_length=24,
        doc_stride=8,
    )
    losses = train_qa(model, tokenizer, examples, config)
    assert losses[-1] < 0.1 * losses[0]
    result = evaluate_qa(model, tokenizer, examples, max_length=24, doc_stride=8)
    assert result.exact_match == 100.0
    assert result.f1 == 100.0


def test_train_qa_requires_trainable_parameters(tmp_path: Path) -> None:
    examples = read_squad(_squad_file(tmp_path / "train.json"))
    model = _model(30).requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameter"):
        train_qa(model, _tokenizer(), examples, QATrainingConfig(max_length=24, doc_stride=8))


def test_training_config_validation() -> None:
    with pytest.raises(ConfigError, match="batch_size must be an integer > 0"):
        QATrainingConfig(batch_size=0)
    with pytest.raises(ConfigError, match="warmup_fraction"):
        QATrainingConfig(warmup_fraction=1.0)


def test_pruned_qa_model_compacts_to_the_same_answers(tmp_path: Path) -> None:
    examples = read_squad(_squad_file(tmp_path / "train.json"))
    tokenizer = _tokenizer()
    model = adapt(
        _model(len(tokenizer)),
        SPLoPAConfig(block_shape=(32, 32), num_prototypes=4, target_modules=r"encoder"),
    )
    schedule = GradualPruningConfig(final_density=0.25, warmup_steps=0, pruning_steps=2)
    pruner = GradualBlockPruner(model, MagnitudeCriterion(), schedule)
    config = QATrainingConfig(
        epochs=2, batch_size=2, learning_rate=1e-2, max_length=24, doc_stride=8
    )
    train_qa(model, tokenizer, examples, config, pruner=pruner)
    pruner.finish()
    masked = evaluate_qa(model, tokenizer, examples, max_length=24, doc_stride=8)
    compacted, report = compact_blocks(model, {"input_ids": torch.ones(1, 24, dtype=torch.long)})
    result = evaluate_qa(compacted, tokenizer, examples, max_length=24, doc_stride=8)
    assert result.predictions == masked.predictions
    assert report.parameters_after < report.parameters_before
