"""SQuAD v1.1 metrics used by the QA pipeline, against hand computations of the official rules."""

from __future__ import annotations

import pytest

from spa.data.squad import SquadExample, f1_score, normalize_answer, squad_evaluate


def _example(identifier: str, *answers: str) -> SquadExample:
    return SquadExample(
        id=identifier,
        title="t",
        context=" ".join(answers),
        question="?",
        answers=answers,
        answer_starts=(0,) * len(answers),
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Eiffel Tower", "eiffel tower"),  # article and case
        ("an apple, a pear.", "apple pear"),  # articles and punctuation
        ("  multiple   spaces\there ", "multiple spaces here"),  # whitespace
        ("theory of a-ha!", "theory of aha"),  # "the" inside a word stays; "-" is removed
    ],
)
def test_normalize_answer_official_steps(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_f1_counts_repeated_tokens_once_per_match() -> None:
    prediction, truth = "cat cat dog", "cat dog dog bird"
    # overlap: cat x1, dog x1 = 2; precision 2/3, recall 2/4
    expected = 2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4)
    assert f1_score(prediction, truth) == pytest.approx(expected)


def test_squad_evaluate_hand_made_predictions() -> None:
    examples = [
        _example("1", "the Eiffel Tower", "Eiffel Tower in Paris"),
        _example("2", "Denver Broncos"),
        _example("3", "1990s"),
        _example("4", "Saint Bernadette Soubirous"),
    ]
    predictions = {
        "1": "Eiffel tower.",  # EM 1 against the first answer after normalisation
        "2": "the  Denver Broncos!",  # EM 1: article, spaces and punctuation removed
        "3": "in the 1980s",  # EM 0, F1 0 (no common token)
        "4": "Bernadette",  # EM 0, F1 = 2 * 1 * 1/3 / (1 + 1/3) = 0.5
    }
    result = squad_evaluate(examples, predictions)
    assert result["exact_match"] == pytest.approx(100 * 2 / 4)
    assert result["f1"] == pytest.approx(100 * (1 + 1 + 0 + 0.5) / 4)
