"""Text for causal language modelling: files or an embedded corpus, tokenizers, token blocks.

The embedded corpus is the Python reference documentation that ships with every CPython as
`pydoc_data.topics` (about 460 KB of English prose and code), so a language-model demo needs no
download. A tokenizer comes from a local `transformers` directory, or is the byte-level
fallback (`ByteTokenizer`, 256 symbols, no files).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import Dataset

from spa.errors import ConfigError


class Tokenizer(Protocol):
    """What the causal-LM task needs of a tokenizer."""

    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


class ByteTokenizer:
    """The byte-level fallback: UTF-8 bytes are the tokens (vocabulary of 256, no files)."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (its UTF-8 bytes)."""
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids (invalid UTF-8 sequences are replaced)."""
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class _HFTokenizer:
    """A `transformers` tokenizer behind the `Tokenizer` protocol (no special tokens added)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids))


def load_tokenizer(
    path: str | os.PathLike | None,
    byte_fallback: bool = False,
    key: str = "data.options.tokenizer",
) -> Tokenizer:
    """The tokenizer in a local directory, or the byte-level fallback.

    Args:
        path: a directory with `transformers` tokenizer files, or None.
        byte_fallback: use `ByteTokenizer` when `path` is None.
        key: the config key named in errors.

    Returns:
        A tokenizer.

    Raises:
        ConfigError: if neither a path nor the fallback is chosen, or the directory holds no
            loadable tokenizer (the message names it).
    """
    if path is None:
        if byte_fallback:
            return ByteTokenizer()
        raise ConfigError(
            f"config key {key!r}: no tokenizer given; set it to a local tokenizer directory or "
            "set data.options.byte_fallback = true for the byte-level fallback"
        )
    directory = Path(path)
    if not directory.is_dir():
        raise ConfigError(f"config key {key!r}: {directory} is not a directory")
    from spa.models.loading import VOCABULARY_FILES

    if not any((directory / name).is_file() for name in VOCABULARY_FILES):
        raise ConfigError(
            f"config key {key!r}: {directory} holds no tokenizer (none of "
            f"{', '.join(VOCABULARY_FILES)})"
        )
    from transformers import AutoTokenizer

    try:
        return _HFTokenizer(AutoTokenizer.from_pretrained(directory, local_files_only=True))
    except (OSError, ValueError, TypeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        message = f"config key {key!r}: cannot load a tokenizer from {directory}: {first}"
        raise ConfigError(message) from None


def read_text(path: str | os.PathLike, key: str = "data.options.train_file") -> str:
    """The UTF-8 text of a file, refusing missing, unreadable or empty files.

    Args:
        path: the file.
        key: the config key named in errors.

    Raises:
        ConfigError: naming `key` and the file.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config key {key!r}: file {file} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config key {key!r}: {file} is a directory, not a text file") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise ConfigError(f"config key {key!r}: cannot read {file} ({reason})") from None
    if not text.strip():
        raise ConfigError(f"config key {key!r}: file {file} is empty (no text to train on)")
    return text


def embedded_corpus() -> str:
    """The Python reference documentation shipped with CPython (`pydoc_data.topics`)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


def split_text(text: str, validation_fraction: float) -> tuple[str, str]:
    """Split text into train and validation parts at a line boundary.

    Args:
        text: the corpus.
        validation_fraction: share of characters for validation, in (0, 1).
    """
    if not 0 < validation_fraction < 1:
        raise ConfigError(
            "config key 'data.options.validation_fraction': must be in (0, 1), got "
            f"{validation_fraction!r}"
        )
    cut = int(len(text) * (1 - validation_fraction))
    newline = text.rfind("\n", 0, cut)
    cut = newline + 1 if newline > 0 else cut
    return text[:cut], text[cut:]


class TokenBlocks(Dataset):
    """Consecutive blocks of `sequence_length` tokens; each item is its own next-token target.

    Items are `{"input_ids": (L,), "labels": (L,)}` with `labels == input_ids`: `transformers`
    causal-LM heads shift the labels themselves, as `next_token_loss` does.

    Args:
        ids: the token ids of the corpus.
        sequence_length: tokens per block (>= 2).
        max_blocks: keep at most this many blocks (None = all).
        source: what the text is (e.g. the file), named in errors.

    Raises:
        ConfigError: if the text is shorter than one block.
    """

    def __init__(
        self,
        ids: list[int],
        sequence_length: int,
        max_blocks: int | None = None,
        source: str = "the text",
    ) -> None:
        if sequence_length < 2:
            raise ConfigError(
                f"config key 'data.options.sequence_length': must be >= 2, got {sequence_length}"
            )
        count = len(ids) // sequence_length
        if max_blocks is not None:
            count = min(count, max_blocks)
        if count == 0:
            raise ConfigError(
                f"config key 'data.options.sequence_length': {source} has {len(ids)} tokens, "
                f"fewer than one block of sequence_length={sequence_length}"
            )
        self.blocks = torch.tensor(ids[: count * sequence_length]).view(count, sequence_length)

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        block = self.blocks[index]
        return {"input_ids": block, "labels": block}


def next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting token t+1 from positions <= t.

    Args:
        logits: `(batch, length, vocab)`.
        input_ids: `(batch, length)`.
    """
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1)
    )


@torch.no_grad()
def perplexity(model: torch.nn.Module, blocks: Iterable[dict[str, torch.Tensor]]) -> float:
    """exp(mean next-token cross-entropy) over all predicted tokens of `blocks`.

    Args:
        model: a causal LM returning `.logits` (or logits) for `input_ids`.
        blocks: batches of `{"input_ids": (B, L)}`.

    Returns:
        The perplexity (token-weighted over batches).
    """
    training = model.training
    model.eval()
    total, tokens = 0.0, 0
    try:
        for batch in blocks:
            ids = batch["input_ids"]
            output = model(input_ids=ids)
            logits = getattr(output, "logits", output)
            count = ids[:, 1:].numel()
            total += float(next_token_loss(logits, ids)) * count
            tokens += count
    finally:
        model.train(training)
    if tokens == 0:
        raise ConfigError("perplexity: no tokens to evaluate")
    return math.exp(total / tokens)
