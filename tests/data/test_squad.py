"""Tests for SQuAD v1.1 reading and the official evaluation metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from spa.data.squad import (
    SquadExample,
    exact_match_score,
    f1_score,
    metric_max_over_ground_truths,
    normalize_answer,
    read_squad,
    squad_evaluate,
)
from spa.errors import ConfigError, SpaWarning

CONTEXT_1 = "The Denver Broncos won Super Bowl 50 at Levi's Stadium in Santa Clara, California."
CONTEXT_2 = "It was the 50th Super Bowl, so the league emphasized the golden anniversary."


def _squad() -> dict[str, Any]:
    return {
        "version": "1.1",
        "data": [
            {
                "title": "Super_Bowl_50",
                "paragraphs": [
                    {
                        "context": CONTEXT_1,
                        "qas": [
                            {
                                "id": "q1",
                                "question": "Who won Super Bowl 50?",
                                "answers": [
                                    {"text": "Denver Broncos", "answer_start": 4},
                                    {"text": "The Denver Broncos", "answer_start": 0},
                                ],
                            },
                            {
                                "id": "q2",
                                "question": "Where was Super Bowl 50 played?",
                                "answers": [
                                    {"text": "Santa Clara, California", "answer_start": 58},
                                    {"text": "Levi's Stadium", "answer_start": 40},
                                ],
                            },
                        ],
                    }
                ],
            },
            {
                "title": "Anniversary",
                "paragraphs": [
                    {
                        "context": CONTEXT_2,
                        "qas": [
                            {
                                "id": "q3",
                                "question": "What was emphasized?",
                                "answers": [{"text": "golden anniversary", "answer_start": 57}],
                            }
                        ],
                    }
                ],
            },
        ],
    }


def _write(tmp_path: Path, content: Any, name: str = "dev-v1.1.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(content))
    return path


def test_fixture_offsets_point_at_answers() -> None:
    for paragraph in (p for a in _squad()["data"] for p in a["paragraphs"]):
        for answer in (answer for qa in paragraph["qas"] for answer in qa["answers"]):
            start = answer["answer_start"]
            assert paragraph["context"][start : start + len(answer["text"])] == answer["text"]


def test_read_squad_flattens_questions(tmp_path: Path) -> None:
    examples = read_squad(_write(tmp_path, _squad()))
    assert [example.id for example in examples] == ["q1", "q2", "q3"]
    assert examples[1] == SquadExample(
        id="q2",
        title="Super_Bowl_50",
        context=CONTEXT_1,
        question="Where was Super Bowl 50 played?",
        answers=("Santa Clara, California", "Levi's Stadium"),
        answer_starts=(58, 40),
    )
    assert examples[2].title == "Anniversary"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["data"][0]["paragraphs"][0]["qas"][1].pop("question"),
            r"data\[0\]\.paragraphs\[0\]\.qas\[1\] has no 'question' field",
        ),
        (
            lambda d: d["data"][1]["paragraphs"][0]["qas"][0]["answers"][0].update(
                answer_start="57"
            ),
            r"data\[1\]\.paragraphs\[0\]\.qas\[0\]\.answers\[0\]\.answer_start "
            r"must be int, got str",
        ),
        (
            lambda d: d["data"][1]["paragraphs"][0]["qas"][0]["answers"][0].update(
                answer_start=999
            ),
            r"data\[1\]\.paragraphs\[0\]\.qas\[0\]\.answers\[0\]\.answer_start=999 is outside",
        ),
        (
            lambda d: d["data"][1]["paragraphs"][0]["qas"][0].update(id="q1"),
            r"data\[1\]\.paragraphs\[0\]\.qas\[0\]\.id 'q1' repeats data\[0\]",
        ),
        (
            lambda d: d["data"][1]["paragraphs"][0]["qas"][0].update(answers=[]),
            r"data\[1\]\.paragraphs\[0\]\.qas\[0\]\.answers is empty",
        ),
        (lambda d: d["data"][1].update(paragraphs={}), r"data\[1\]\.paragraphs must be list"),
        (lambda d: d.pop("data"), "top level has no 'data' field"),
    ],
)
def test_read_squad_errors_name_file_and_entry(tmp_path: Path, edit, message: str) -> None:
    content = _squad()
    edit(content)
    with pytest.raises(ConfigError, match=r"dev-v1\.1\.json: " + message):
        read_squad(_write(tmp_path, content))


def test_read_squad_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"broken\.json: not valid JSON"):
        read_squad(path)


def test_read_squad_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent\.json: SQuAD file not found"):
        read_squad(tmp_path / "absent.json")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The  Cat!", "cat"),
        ("an apple, a pear and THE plum", "apple pear and plum"),
        ("theater anthem", "theater anthem"),  # articles only as whole words
        ("a-b", "ab"),  # punctuation goes first, so "a-b" becomes the word "ab"
        ("Levi's\tStadium\n", "levis stadium"),
        ("the", ""),
        ("  Denver   Broncos. ", "denver broncos"),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_exact_match_score_after_normalisation() -> None:
    assert exact_match_score("The Denver Broncos.", "denver broncos")
    assert not exact_match_score("Denver", "Denver Broncos")


@pytest.mark.parametrize(
    ("prediction", "ground_truth", "expected"),
    [
        ("the quick brown fox", "quick fox jumps", 2 / 3),  # overlap 2, P = R = 2/3
        ("cat cat", "cat", 2 / 3),  # overlap 1 (counted once), P = 1/2, R = 1
        ("cat cat dog", "cat dog dog", 2 / 3),  # overlap min counts: cat 1 + dog 1
        ("Levi's Stadium in Santa Clara", "Levi's Stadium", 4 / 7),  # P = 2/5, R = 1
        ("the", "a", 0.0),  # both empty after normalisation: no overlap scores 0
        ("Denver Broncos!", "the denver broncos", 1.0),
    ],
)
def test_f1_score_token_overlap(prediction: str, ground_truth: str, expected: float) -> None:
    assert f1_score(prediction, ground_truth) == pytest.approx(expected)


def test_metric_max_over_ground_truths() -> None:
    truths = ["Santa Clara, California", "Levi's Stadium"]
    prediction = "Levi's Stadium in Santa Clara"
    # Against the first: overlap 2, P = 2/5, R = 2/3, F1 = 1/2; against the second: 4/7.
    assert metric_max_over_ground_truths(f1_score, prediction, truths) == pytest.approx(4 / 7)
    assert metric_max_over_ground_truths(exact_match_score, "levis stadium", truths) == 1.0


def test_squad_evaluate_matches_hand_computation(tmp_path: Path) -> None:
    examples = read_squad(_write(tmp_path, _squad()))
    predictions = {"q1": "the denver broncos.", "q2": "Levi's Stadium in Santa Clara", "q3": "gold"}
    scores = squad_evaluate(examples, predictions)
    assert scores["exact_match"] == pytest.approx(100 * 1 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 4 / 7 + 0) / 3)


def test_squad_evaluate_unanswered_scores_zero_and_warns(tmp_path: Path) -> None:
    examples = read_squad(_write(tmp_path, _squad()))
    with pytest.warns(SpaWarning, match="2 of 3 questions have no prediction"):
        scores = squad_evaluate(examples, {"q3": "Golden anniversary", "unknown": "x"})
    assert scores == pytest.approx({"exact_match": 100 / 3, "f1": 100 / 3})


def test_squad_evaluate_rejects_no_examples() -> None:
    with pytest.raises(ConfigError, match="no examples"):
        squad_evaluate([], {})
