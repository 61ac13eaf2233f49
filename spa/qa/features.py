"""SQuAD examples -> model features: fast-tokenizer encoding with a document stride.

A question and its context are encoded as `[CLS] question [SEP] context [SEP]`, truncating only
the context; a long context is split into overlapping windows (`doc_stride` tokens of overlap),
so one example can give several features. Training features carry the answer's start/end token
positions, or the `[CLS]` position when the answer is not inside the window; evaluation
features carry the context offsets used by post-processing to map token spans back to text.
The same recipe as `transformers`' `run_qa.py` example.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from spa.data.squad import SquadExample
from spa.errors import ConfigError


@dataclass
class QAFeatures:
    """Encoded windows of a list of examples.

    Attributes:
        inputs: model inputs `input_ids`, `attention_mask`, `token_type_ids` (when the tokenizer
            makes them), each `(features, max_length)`; for training also `start_positions`
            and `end_positions`, each `(features,)`.
        example_indices: for each feature, the index of its example in the input list.
        offsets: for each feature, per token the `(start, end)` character span in the context,
            or None for question, special and padding tokens.
    """

    inputs: dict[str, torch.Tensor]
    example_indices: list[int]
    offsets: list[list[tuple[int, int] | None]]

    def __len__(self) -> int:
        return len(self.example_indices)


def _check(tokenizer, max_length: int, doc_stride: int) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"{type(tokenizer).__name__} is not a fast tokenizer; question answering needs "
            "offset mappings, use a `PreTrainedTokenizerFast` (e.g. BertTokenizerFast)"
        )
    if tokenizer.padding_side != "right":
        raise ConfigError(
            f"tokenizer.padding_side={tokenizer.padding_side!r}; question answering expects "
            "'right' (question first, context second)"
        )
    if not 0 < doc_stride < max_length:
        raise ConfigError(
            f"doc_stride={doc_stride} must be in (0, max_length={max_length}); e.g. 128 for 384"
        )


def _encode(examples, tokenizer, max_length: int, doc_stride: int):
    return tokenizer(
        [example.question.lstrip() for example in examples],
        [example.context for example in examples],
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )


def _context_offsets(encoding, index: int) -> list[tuple[int, int] | None]:
    sequence_ids = encoding.sequence_ids(index)
    return [
        tuple(span) if sequence_ids[k] == 1 else None
        for k, span in enumerate(encoding["offset_mapping"][index])
    ]


def _answer_positions(
    offsets: list[tuple[int, int] | None], answer_start: int, answer_end: int, cls_index: int
) -> tuple[int, int]:
    """Token start/end of the answer characters `[answer_start, answer_end)`, or CLS twice."""
    context = [k for k, span in enumerate(offsets) if span is not None]
    if not context:
        return cls_index, cls_index
    first, last = context[0], context[-1]
    if offsets[first][0] > answer_start or offsets[last][1] < answer_end:
        return cls_index, cls_index
    start = first
    while start <= last and offsets[start][1] <= answer_start:
        start += 1
    end = last
    while end >= first and offsets[end][0] >= answer_end:
        end -= 1
    return start, end


def _tensors(encoding, names: Sequence[str]) -> dict[str, torch.Tensor]:
    return {
        name: torch.tensor(encoding[name], dtype=torch.long) for name in names if name in encoding
    }


def prepare_train_features(
    examples: Sequence[SquadExample], tokenizer, max_length: int = 384, doc_stride: int = 128
) -> QAFeatures:
    """Encode examples for training, with the first answer's start/end token positions.

    Args:
        examples: SQuAD examples (e.g. from `spa.data.squad.read_squad`).
        tokenizer: a fast tokenizer (BERT-style pair encoding).
        max_length: tokens per feature, question and special tokens included.
        doc_stride: overlap in tokens between consecutive windows of a long context.

    Returns:
        Features whose `inputs` include `start_positions` and `end_positions` (the `[CLS]`
        index when the answer lies outside the window).

    Raises:
        ConfigError: for a slow tokenizer, left padding or a stride outside (0, max_length).
    """
    _check(tokenizer, max_length, doc_stride)
    encoding = _encode(examples, tokenizer, max_length, doc_stride)
    example_indices = list(encoding["overflow_to_sample_mapping"])
    offsets, starts, ends = [], [], []
    for index, example_index in enumerate(example_indices):
        example = examples[example_index]
        spans = _context_offsets(encoding, index)
        cls_index = encoding["input_ids"][index].index(tokenizer.cls_token_id)
        answer_start = example.answer_starts[0]
        answer_end = answer_start + len(example.answers[0])
        start, end = _answer_positions(spans, answer_start, answer_end, cls_index)
        offsets.append(spans)
        starts.append(start)
        ends.append(end)
    inputs = _tensors(encoding, ("input_ids", "attention_mask", "token_type_ids"))
    inputs["start_positions"] = torch.tensor(starts, dtype=torch.long)
    inputs["end_positions"] = torch.tensor(ends, dtype=torch.long)
    return QAFeatures(inputs=inputs, example_indices=example_indices, offsets=offsets)


def prepare_eval_features(
    examples: Sequence[SquadExample], tokenizer, max_length: int = 384, doc_stride: int = 128
) -> QAFeatures:
    """Encode examples for evaluation, keeping context offsets for post-processing.

    Args:
        examples: SQuAD examples.
        tokenizer: a fast tokenizer (BERT-style pair encoding).
        max_length: tokens per feature.
        doc_stride: overlap in tokens between consecutive windows.

    Returns:
        Features without answer positions.

    Raises:
        ConfigError: for a slow tokenizer, left padding or a stride outside (0, max_length).
    """
    _check(tokenizer, max_length, doc_stride)
    encoding = _encode(examples, tokenizer, max_length, doc_stride)
    example_indices = list(encoding["overflow_to_sample_mapping"])
    offsets = [_context_offsets(encoding, index) for index in range(len(example_indices))]
    inputs = _tensors(encoding, ("input_ids", "attention_mask", "token_type_ids"))
    return QAFeatures(inputs=inputs, example_indices=example_indices, offsets=offsets)
