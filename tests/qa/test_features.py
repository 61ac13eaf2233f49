from __future__ import annotations

import pytest
import torch
from transformers import BertTokenizerFast

from spa.data.squad import SquadExample
from spa.errors import ConfigError
from spa.qa.features import prepare_eval_features, prepare_train_features

WORDS = "the cat sat on mat where did a dog run in park who ? . , big red".split()


def _tokenizer() -> BertTokenizerFast:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    return BertTokenizerFast(vocab={token: index for index, token in enumerate(vocab)})


def _example(context: str, answer: str, question: str = "where did the cat sit?") -> SquadExample:
    start = context.index(answer)
    return SquadExample(
        id="q1",
        title="t",
        context=context,
        question=question,
        answers=(answer,),
        answer_starts=(start,),
    )


def test_train_features_mark_the_answer_tokens() -> None:
    tokenizer = _tokenizer()
    example = _example("The cat sat on the big red mat.", "big red mat")
    features = prepare_train_features([example], tokenizer, max_length=32, doc_stride=8)
    assert len(features) == 1
    ids = features.inputs["input_ids"][0]
    start = int(features.inputs["start_positions"][0])
    end = int(features.inputs["end_positions"][0])
    assert tokenizer.decode(ids[start : end + 1]) == "big red mat"
    # offsets map the span back to the answer characters
    span = (features.offsets[0][start][0], features.offsets[0][end][1])
    assert span == (19, 30)
    assert example.context[span[0] : span[1]] == "big red mat"


def test_train_features_split_long_contexts_with_stride() -> None:
    tokenizer = _tokenizer()
    context = "the cat sat on the mat . a dog run in the park . the big red cat sat ."
    example = _example(context, "big red cat")
    features = prepare_train_features([example], tokenizer, max_length=16, doc_stride=4)
    # question "[CLS] where did the cat sit ? [SEP]" uses 8 tokens (sit is [UNK]) + final [SEP]:
    # 7 context tokens per window, 4 shared with the next one -> windows start every 3 tokens.
    context_tokens = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    assert context_tokens == 20
    assert len(features) == 6  # windows start at 0, 3, 6, 9, 12, 15
    assert features.example_indices == [0] * 6
    starts = features.inputs["start_positions"].tolist()
    ends = features.inputs["end_positions"].tolist()
    for row in range(6):
        ids = features.inputs["input_ids"][row]
        if starts[row] == 0:
            assert ends[row] == 0  # answer not (fully) in this window: [CLS]
        else:
            assert tokenizer.decode(ids[starts[row] : ends[row] + 1]) == "big red cat"
    assert sum(s != 0 for s in starts) == 2  # windows [12, 19) and [15, 20) hold tokens 15..17
    assert starts[0] == 0  # the first window ends before the answer


def test_eval_features_keep_only_context_offsets() -> None:
    tokenizer = _tokenizer()
    example = _example("the cat sat.", "cat")
    features = prepare_eval_features([example], tokenizer, max_length=16, doc_stride=4)
    offsets = features.offsets[0]
    tokens = features.inputs["input_ids"][0]
    context = [k for k, span in enumerate(offsets) if span is not None]
    assert [example.context[offsets[k][0] : offsets[k][1]] for k in context] == [
        "the",
        "cat",
        "sat",
        ".",
    ]
    assert int(tokens[0]) == tokenizer.cls_token_id and offsets[0] is None
    assert "start_positions" not in features.inputs
    assert set(features.inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    assert features.inputs["input_ids"].dtype == torch.long


def test_features_reject_bad_stride() -> None:
    with pytest.raises(ConfigError, match="doc_stride=16 must be in"):
        prepare_eval_features([_example("the cat", "cat")], _tokenizer(), 16, 16)


def test_features_reject_slow_tokenizer() -> None:
    class Slow:
        is_fast = False

    with pytest.raises(ConfigError, match="not a fast tokenizer"):
        prepare_train_features([_example("the cat", "cat")], Slow(), 16, 4)
