"""Causal-LM text data: tokenizers, files, blocks and perplexity against direct computations."""

from __future__ import annotations

import math

import pytest
import torch
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from spa.data.text import (
    ByteTokenizer,
    TokenBlocks,
    embedded_corpus,
    load_tokenizer,
    next_token_loss,
    perplexity,
    read_text,
    split_text,
)
from spa.errors import ConfigError


def test_byte_tokenizer_round_trips_unicode():
    text = "naïve café — λ"
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert max(ids) < tokenizer.vocab_size
    assert tokenizer.decode(ids) == text


def test_load_tokenizer_without_path_or_fallback_names_the_key():
    with pytest.raises(ConfigError, match="data.options.tokenizer"):
        load_tokenizer(None)


def test_load_tokenizer_from_local_directory(tmp_path):
    raw = RawTokenizer(models.WordLevel(unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(
        ["the cat sat on the mat", "a dog"], trainers.WordLevelTrainer(special_tokens=["[UNK]"])
    )
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]").save_pretrained(tmp_path)
    tokenizer = load_tokenizer(tmp_path)
    ids = tokenizer.encode("the cat sat")
    assert len(ids) == 3 and len(set(ids)) == 3
    assert tokenizer.decode(ids) == "the cat sat"


def test_load_tokenizer_refuses_a_directory_without_tokenizer(tmp_path):
    with pytest.raises(ConfigError, match=str(tmp_path)):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("kind", ["missing", "empty", "directory"])
def test_read_text_refuses_bad_files(tmp_path, kind):
    path = tmp_path / "train.txt"
    if kind == "empty":
        path.write_text("  \n")
    elif kind == "directory":
        path.mkdir()
    with pytest.raises(ConfigError, match="data.options.train_file"):
        read_text(path)


def test_embedded_corpus_ships_with_python():
    text = embedded_corpus()
    assert len(text) > 100_000 and "assert" in text


def test_split_text_cuts_at_a_line_and_keeps_everything():
    text = "".join(f"line {i}\n" for i in range(100))
    train, validation = split_text(text, 0.1)
    assert train + validation == text
    assert train.endswith("\n") and 0.05 < len(validation) / len(text) < 0.15


def test_token_blocks_cover_consecutive_tokens():
    blocks = TokenBlocks(list(range(23)), sequence_length=5)
    assert len(blocks) == 4
    item = blocks[2]
    assert item["input_ids"].tolist() == [10, 11, 12, 13, 14]
    assert torch.equal(item["labels"], item["input_ids"])


def test_token_blocks_refuse_text_shorter_than_a_block():
    with pytest.raises(ConfigError, match="sequence_length=8"):
        TokenBlocks([1, 2, 3], sequence_length=8)


def test_next_token_loss_matches_a_loop():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    losses = [
        -torch.log_softmax(logits[b, t], dim=-1)[ids[b, t + 1]] for b in range(2) for t in range(4)
    ]
    torch.testing.assert_close(next_token_loss(logits, ids), torch.stack(losses).mean())


class _Uniform(torch.nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids):
        return torch.zeros(*input_ids.shape, self.vocab)


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    batches = [{"input_ids": torch.randint(0, 11, (3, 6))} for _ in range(2)]
    assert perplexity(_Uniform(11), batches) == pytest.approx(11.0)


def test_perplexity_weights_batches_by_tokens():
    class Fixed(torch.nn.Module):
        def forward(self, input_ids):
            # Loss log(2) on short batches, log(4) on long ones.
            vocab = 2 if input_ids.shape[1] == 2 else 4
            return torch.zeros(*input_ids.shape, vocab)

    batches = [
        {"input_ids": torch.zeros(1, 2, dtype=torch.long)},
        {"input_ids": torch.zeros(1, 4, dtype=torch.long)},
    ]
    expected = math.exp((1 * math.log(2) + 3 * math.log(4)) / 4)
    assert perplexity(Fixed(), batches) == pytest.approx(expected)
