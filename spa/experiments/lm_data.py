"""The text of a causal-LM experiment: its `data.options`, tokenizer and token blocks.

Two data sets: `data.name = "text"` reads local UTF-8 files (`data.options.train_file`, and
`eval_file` or a `validation_fraction` of the training file; relative to `data.root` when it is
set), `data.name = "embedded"` uses the Python reference documentation that ships with CPython
(`pydoc_data.topics`, no download) split by `validation_fraction`. The tokenizer is a local
`transformers` tokenizer directory (`data.options.tokenizer`, by default the model directory of
`model.name = "transformers"`) or, with `data.options.byte_fallback = true`, the byte-level
`ByteTokenizer` (256 tokens, no files). Blocks of `sequence_length` tokens are the examples.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from spa.data.text import (
    TokenBlocks,
    Tokenizer,
    embedded_corpus,
    load_tokenizer,
    read_text,
    split_text,
)
from spa.errors import ConfigError
from spa.experiments._typecheck import build_section, config_key_error
from spa.experiments.config import ExperimentConfig

DATA_NAMES = ("text", "embedded")
DEFAULT_VALIDATION_FRACTION = 0.1


@dataclass(frozen=True, kw_only=True)
class TextOptions:
    """`data.options` of a causal-LM experiment.

    Args:
        train_file: training text (`data.name = "text"`).
        eval_file: evaluation text; if omitted, the last `validation_fraction` of the training
            text (cut at a line boundary) is held out.
        validation_fraction: share of the text held out for evaluation (default 0.1).
        sequence_length: tokens per block (one training example).
        tokenizer: local `transformers` tokenizer directory.
        byte_fallback: without `tokenizer`, use the byte-level tokenizer (UTF-8 bytes).
        max_eval_blocks: evaluate on at most this many blocks (all if omitted).
    """

    train_file: str | None = None
    eval_file: str | None = None
    validation_fraction: float | None = None
    sequence_length: int = 128
    tokenizer: str | None = None
    byte_fallback: bool = False
    max_eval_blocks: int | None = None


def text_options(config: ExperimentConfig) -> TextOptions:
    """The checked `data.options` of a causal-LM config.

    Raises:
        ConfigError: for an unknown option, a wrong type or value, or files that do not fit
            `data.name`, naming the key.
    """
    options = build_section(TextOptions, config.data.options, "data.options")
    if options.sequence_length < 2:
        raise config_key_error(
            "data.options.sequence_length", f"must be >= 2, got {options.sequence_length}"
        )
    fraction = options.validation_fraction
    if fraction is not None and not 0 < fraction < 1:
        raise config_key_error(
            "data.options.validation_fraction", f"must be in (0, 1), got {fraction}"
        )
    if options.max_eval_blocks is not None and options.max_eval_blocks < 1:
        raise config_key_error("data.options.max_eval_blocks", "must be >= 1 or omitted")
    if config.data.name == "embedded":
        for key in ("train_file", "eval_file"):
            if getattr(options, key) is not None:
                raise config_key_error(
                    f"data.options.{key}",
                    "data.name = 'embedded' uses the built-in corpus; set data.name = 'text' "
                    "to read files",
                )
    elif options.train_file is None:
        raise config_key_error(
            "data.options.train_file", "data.name = 'text' needs the training text file"
        )
    if options.eval_file is not None and fraction is not None:
        raise config_key_error(
            "data.options.validation_fraction",
            "give either data.options.eval_file or a validation_fraction of the training text",
        )
    if options.eval_file is None and fraction is None:
        options = dataclasses.replace(options, validation_fraction=DEFAULT_VALIDATION_FRACTION)
    return options


def tokenizer_problem(config: ExperimentConfig) -> str | None:
    """Why no tokenizer can be chosen for `config` (naming the key), or None."""
    options = config.data.options
    has_directory = options.get("tokenizer") is not None or config.model.name == "transformers"
    if has_directory or options.get("byte_fallback") is True:
        return None
    return (
        "config key 'data.options.tokenizer': no tokenizer given; set it to a local tokenizer "
        "directory, or set data.options.byte_fallback = true for the byte-level tokenizer"
    )


def build_tokenizer(config: ExperimentConfig, options: TextOptions) -> Tokenizer:
    """The tokenizer directory's tokenizer, the model directory's, or the byte fallback.

    Raises:
        ConfigError: if none is configured or the directory holds no loadable tokenizer.
    """
    if options.tokenizer is not None:
        return load_tokenizer(options.tokenizer, key="data.options.tokenizer")
    if options.byte_fallback:
        return load_tokenizer(None, byte_fallback=True)
    if config.model.name == "transformers":
        try:
            return load_tokenizer(config.model.path, key="model.path")
        except ConfigError as error:
            raise ConfigError(
                f"{error}; set data.options.tokenizer to a tokenizer directory or "
                "data.options.byte_fallback = true"
            ) from None
    return load_tokenizer(None, key="data.options.tokenizer")


def _path(config: ExperimentConfig, name: str) -> Path:
    path = Path(name)
    return Path(config.data.root) / path if config.data.root is not None else path


def read_texts(config: ExperimentConfig, options: TextOptions) -> tuple[str, str, str, str]:
    """The training and evaluation text and where each comes from (for messages).

    Raises:
        ConfigError: for a missing, unreadable or empty file (naming the key and file).
    """
    if config.data.name == "embedded":
        train, evaluation = split_text(embedded_corpus(), options.validation_fraction)
        where = "the embedded corpus (pydoc_data.topics)"
        return train, evaluation, f"{where}, training part", f"{where}, held-out part"
    train_path = _path(config, options.train_file)
    train = read_text(train_path, key="data.options.train_file")
    if options.eval_file is not None:
        eval_path = _path(config, options.eval_file)
        evaluation = read_text(eval_path, key="data.options.eval_file")
        return train, evaluation, str(train_path), str(eval_path)
    train, evaluation = split_text(train, options.validation_fraction)
    return train, evaluation, f"{train_path} (training part)", f"{train_path} (held-out part)"


@dataclass(frozen=True)
class TextData:
    """Tokenizer and token blocks of a causal-LM experiment.

    Args:
        tokenizer: the tokenizer.
        train: training blocks.
        eval: evaluation blocks.
    """

    tokenizer: Tokenizer
    train: TokenBlocks
    eval: TokenBlocks


def load_text_data(config: ExperimentConfig, options: TextOptions) -> TextData:
    """Read, tokenize and block the training and evaluation text of `config`.

    Raises:
        ConfigError: for a bad tokenizer, bad files, or a text shorter than one block.
    """
    tokenizer = build_tokenizer(config, options)
    train, evaluation, train_source, eval_source = read_texts(config, options)
    length = options.sequence_length
    return TextData(
        tokenizer=tokenizer,
        train=TokenBlocks(tokenizer.encode(train), length, source=train_source),
        eval=TokenBlocks(
            tokenizer.encode(evaluation), length, options.max_eval_blocks, source=eval_source
        ),
    )
