"""SQuAD v1.1: reading the JSON files and the official evaluation (evaluate-v1.1.py).

The file format is
`{"version": ..., "data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
"answers": [{"text", "answer_start"}]}]}]}]}`. `read_squad` flattens it into one `SquadExample`
per question. The metric functions reproduce the official script exactly: answers are
normalised (lower case, punctuation removed, the articles a/an/the removed, whitespace
collapsed), exact match and token-level F1 are taken as the maximum over the ground truths, and
both are averaged over all questions as percentages.
"""

from __future__ import annotations

import json
import re
import string
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spa.errors import ConfigError, SpaWarning

__all__ = [
    "SquadExample",
    "exact_match_score",
    "f1_score",
    "metric_max_over_ground_truths",
    "normalize_answer",
    "read_squad",
    "squad_evaluate",
]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


@dataclass(frozen=True, kw_only=True)
class SquadExample:
    """One SQuAD question with its context and ground-truth answers.

    Args:
        id: the question id, the key of the predictions dict.
        title: title of the article the paragraph comes from.
        context: the paragraph the answer is taken from.
        question: the question text.
        answers: ground-truth answer texts (one in train, usually three in dev).
        answer_starts: character offset of each answer in `context`.
    """

    id: str
    title: str
    context: str
    question: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]


def _field(entry: Any, key: str, kind: type, where: str, path: Path) -> Any:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{path}: {where} must be a JSON object, got {type(entry).__name__}")
    if key not in entry:
        raise ConfigError(f"{path}: {where} has no {key!r} field")
    value = entry[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(
            f"{path}: {where}.{key} must be {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _read_question(qa: Any, where: str, title: str, context: str, path: Path) -> SquadExample:
    answers = _field(qa, "answers", list, where, path)
    if not answers:
        raise ConfigError(f"{path}: {where}.answers is empty (SQuAD v2.0 files are not supported)")
    texts, starts = [], []
    for index, answer in enumerate(answers):
        answer_where = f"{where}.answers[{index}]"
        texts.append(_field(answer, "text", str, answer_where, path))
        start = _field(answer, "answer_start", int, answer_where, path)
        if not 0 <= start <= len(context):
            raise ConfigError(
                f"{path}: {answer_where}.answer_start={start} is outside the context "
                f"(length {len(context)})"
            )
        starts.append(start)
    return SquadExample(
        id=_field(qa, "id", str, where, path),
        title=title,
        context=context,
        question=_field(qa, "question", str, where, path),
        answers=tuple(texts),
        answer_starts=tuple(starts),
    )


def read_squad(path: str | Path) -> list[SquadExample]:
    """Read a SQuAD v1.1 JSON file into one example per question.

    Args:
        path: e.g. `dev-v1.1.json`.

    Returns:
        The examples in file order.

    Raises:
        ConfigError: if the file is missing or not JSON, an entry lacks a field or has the wrong
            type, an answer offset lies outside its context, or a question id repeats; the
            message names the file and the entry, e.g. `data[0].paragraphs[2].qas[1].id`.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: SQuAD file not found")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from error
    examples: list[SquadExample] = []
    first_seen: dict[str, str] = {}
    for article_index, article in enumerate(_field(content, "data", list, "top level", path)):
        article_where = f"data[{article_index}]"
        title = _field(article, "title", str, article_where, path)
        paragraphs = _field(article, "paragraphs", list, article_where, path)
        for paragraph_index, paragraph in enumerate(paragraphs):
            paragraph_where = f"{article_where}.paragraphs[{paragraph_index}]"
            context = _field(paragraph, "context", str, paragraph_where, path)
            for qa_index, qa in enumerate(_field(paragraph, "qas", list, paragraph_where, path)):
                where = f"{paragraph_where}.qas[{qa_index}]"
                example = _read_question(qa, where, title, context, path)
                if example.id in first_seen:
                    raise ConfigError(
                        f"{path}: {where}.id {example.id!r} repeats {first_seen[example.id]}.id"
                    )
                first_seen[example.id] = where
                examples.append(example)
    return examples


def normalize_answer(text: str) -> str:
    """Lower-case, remove punctuation, remove articles (a, an, the) and collapse whitespace.

    The same steps in the same order as the official `evaluate-v1.1.py`.

    Args:
        text: an answer or prediction.

    Returns:
        The normalised text.
    """
    text = text.lower()
    text = "".join(character for character in text if character not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    """Return whether the normalised prediction equals the normalised ground truth.

    Args:
        prediction: the predicted answer text.
        ground_truth: one reference answer text.

    Returns:
        True for an exact match after `normalize_answer`.
    """
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def f1_score(prediction: str, ground_truth: str) -> float:
    """Return the token-level F1 of the normalised prediction against one ground truth.

    Tokens are the whitespace-separated words after `normalize_answer`; the overlap counts
    repeated tokens as often as both sides contain them (a `Counter` intersection). No overlap,
    including two empty answers, scores 0 as in the official script.

    Args:
        prediction: the predicted answer text.
        ground_truth: one reference answer text.

    Returns:
        F1 in [0, 1].
    """
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(prediction_tokens)
    recall = overlap / len(ground_truth_tokens)
    return 2 * precision * recall / (precision + recall)


def metric_max_over_ground_truths(
    metric: Callable[[str, str], float | bool], prediction: str, ground_truths: Sequence[str]
) -> float:
    """Return the best score of `prediction` against any of the ground truths.

    Args:
        metric: `exact_match_score` or `f1_score`.
        prediction: the predicted answer text.
        ground_truths: the reference answers (at least one).

    Returns:
        The maximum score as a float.
    """
    return float(max(metric(prediction, ground_truth) for ground_truth in ground_truths))


def squad_evaluate(
    examples: Sequence[SquadExample], predictions: Mapping[str, str]
) -> dict[str, float]:
    """Score predictions with the official SQuAD v1.1 metrics.

    A question without a prediction scores 0 (the official script reports these on stderr; here
    one `SpaWarning` gives the count). Predictions for unknown ids are ignored, as officially.

    Args:
        examples: the questions, e.g. from `read_squad`.
        predictions: predicted answer text by question id.

    Returns:
        `{"exact_match": ..., "f1": ...}` as percentages averaged over all examples.

    Raises:
        ConfigError: if `examples` is empty.
    """
    if not examples:
        raise ConfigError("squad_evaluate: no examples to evaluate")
    exact_match = f1 = 0.0
    unanswered = []
    for example in examples:
        if example.id not in predictions:
            unanswered.append(example.id)
            continue
        prediction = predictions[example.id]
        exact_match += metric_max_over_ground_truths(exact_match_score, prediction, example.answers)
        f1 += metric_max_over_ground_truths(f1_score, prediction, example.answers)
    if unanswered:
        warnings.warn(
            f"{len(unanswered)} of {len(examples)} questions have no prediction and score 0 "
            f"(first: {unanswered[0]!r})",
            SpaWarning,
            stacklevel=2,
        )
    return {"exact_match": 100.0 * exact_match / len(examples), "f1": 100.0 * f1 / len(examples)}
