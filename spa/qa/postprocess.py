"""Start/end logits -> answer text per question (the standard SQuAD v1.1 post-processing).

For every feature of an example, the `n_best` highest start and end logits are paired; a pair
is valid when both tokens lie in the context, `start <= end` and the span has at most
`max_answer_length` tokens. The valid pair with the highest `start_logit + end_logit` over all
of the example's features wins, and its text is cut from the context with the token offsets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from spa.data.squad import SquadExample
from spa.errors import ConfigError
from spa.qa.features import QAFeatures


def best_span(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    offsets: Sequence[tuple[int, int] | None],
    n_best: int = 20,
    max_answer_length: int = 30,
) -> tuple[float, int, int] | None:
    """The best valid span of one feature.

    Args:
        start_logits: `(tokens,)` start scores.
        end_logits: `(tokens,)` end scores.
        offsets: per token the context character span, or None outside the context.
        n_best: how many top start and end candidates to pair.
        max_answer_length: longest span in tokens.

    Returns:
        `(score, start_char, end_char)`, or None when no pair is valid.
    """
    top = min(n_best, start_logits.numel())
    starts = torch.topk(start_logits, top).indices.tolist()
    ends = torch.topk(end_logits, min(n_best, end_logits.numel())).indices.tolist()
    best = None
    for start in starts:
        for end in ends:
            if start >= len(offsets) or end >= len(offsets):
                continue
            if offsets[start] is None or offsets[end] is None:
                continue
            if end < start or end - start + 1 > max_answer_length:
                continue
            score = float(start_logits[start] + end_logits[end])
            if best is None or score > best[0]:
                best = (score, offsets[start][0], offsets[end][1])
    return best


def postprocess_predictions(
    examples: Sequence[SquadExample],
    features: QAFeatures,
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    n_best: int = 20,
    max_answer_length: int = 30,
) -> dict[str, str]:
    """Answer text per question id from the features' start/end logits.

    Args:
        examples: the examples the features were made from, in the same order.
        features: from `prepare_eval_features`.
        start_logits: `(features, tokens)`.
        end_logits: `(features, tokens)`.
        n_best: top start/end candidates paired per feature.
        max_answer_length: longest answer in tokens.

    Returns:
        `{question_id: answer_text}`; "" when no feature has a valid span.

    Raises:
        ConfigError: if the logits do not have one row per feature.
    """
    if start_logits.shape[0] != len(features) or end_logits.shape[0] != len(features):
        raise ConfigError(
            f"logits have {start_logits.shape[0]} / {end_logits.shape[0]} rows for "
            f"{len(features)} features; pass the logits of exactly these features"
        )
    best: dict[int, tuple[float, int, int]] = {}
    for row, example_index in enumerate(features.example_indices):
        span = best_span(
            start_logits[row], end_logits[row], features.offsets[row], n_best, max_answer_length
        )
        if span is not None and (example_index not in best or span[0] > best[example_index][0]):
            best[example_index] = span
    predictions = {}
    for index, example in enumerate(examples):
        span = best.get(index)
        predictions[example.id] = "" if span is None else example.context[span[1] : span[2]]
    return predictions
