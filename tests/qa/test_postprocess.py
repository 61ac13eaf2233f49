from __future__ import annotations

import pytest
import torch

from spa.data.squad import SquadExample
from spa.errors import ConfigError
from spa.qa.features import QAFeatures
from spa.qa.postprocess import best_span, postprocess_predictions

CONTEXT = "alpha beta gamma delta"
# token k of the feature: 0 = [CLS], 1..4 = the four words, 5 = [SEP]
OFFSETS = [None, (0, 5), (6, 10), (11, 16), (17, 22), None]


def _example(identifier: str = "q") -> SquadExample:
    return SquadExample(
        id=identifier,
        title="t",
        context=CONTEXT,
        question="?",
        answers=("beta",),
        answer_starts=(6,),
    )


def test_best_span_takes_highest_valid_sum() -> None:
    start = torch.tensor([9.0, 1.0, 5.0, 0.0, 0.0, 9.0])
    end = torch.tensor([9.0, 0.0, 0.0, 4.0, 3.0, 9.0])
    # [CLS]/[SEP] are not context; best valid: start 2 (5) + end 3 (4) = 9
    assert best_span(start, end, OFFSETS) == (9.0, 6, 16)


def test_best_span_rejects_reversed_and_too_long_spans() -> None:
    start = torch.tensor([0.0, 1.0, 0.0, 0.0, 8.0, 0.0])
    end = torch.tensor([0.0, 7.0, 0.0, 0.0, 2.0, 0.0])
    # (4, 1) is reversed; with max_answer_length=3, (1, 4) is too long; (4, 4) scores 10
    assert best_span(start, end, OFFSETS, max_answer_length=3) == (10.0, 17, 22)
    assert best_span(start, end, OFFSETS, n_best=1, max_answer_length=3) is None


def test_postprocess_picks_best_feature_per_example() -> None:
    features = QAFeatures(inputs={}, example_indices=[0, 0, 1], offsets=[OFFSETS] * 3)
    start = torch.zeros(3, 6)
    end = torch.zeros(3, 6)
    start[0, 1], end[0, 1] = 2.0, 2.0  # "alpha", score 4
    start[1, 3], end[1, 4] = 3.0, 3.0  # "gamma delta", score 6: wins for example 0
    start[2, 2], end[2, 2] = 1.0, 1.0  # "beta" for example 1
    predictions = postprocess_predictions([_example("a"), _example("b")], features, start, end)
    assert predictions == {"a": "gamma delta", "b": "beta"}


def test_postprocess_without_valid_span_predicts_empty() -> None:
    features = QAFeatures(inputs={}, example_indices=[0], offsets=[[None] * 6])
    predictions = postprocess_predictions(
        [_example()], features, torch.zeros(1, 6), torch.zeros(1, 6)
    )
    assert predictions == {"q": ""}


def test_postprocess_checks_logit_rows() -> None:
    features = QAFeatures(inputs={}, example_indices=[0], offsets=[OFFSETS])
    with pytest.raises(ConfigError, match="for 1 features"):
        postprocess_predictions([_example()], features, torch.zeros(2, 6), torch.zeros(2, 6))
