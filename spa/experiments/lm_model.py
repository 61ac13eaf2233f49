"""The model of a causal-LM experiment, the checks that it is one, and its training loop.

The model is a `spa.models` network (e.g. `tiny_llama`, optionally with `model.weights`) or a
local `transformers` directory loaded with `AutoModelForCausalLM`. Before training, spa checks
what the run relies on, each failure a one-line `ConfigError` naming the key: the model
predicts the next token only from earlier ones (a probe run: changing later tokens must leave
earlier logits unchanged, which refuses encoders such as BERT), its vocabulary holds the
tokenizer's, and `data.options.sequence_length` fits its position embeddings.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spa.data.text import next_token_loss, perplexity
from spa.errors import ConfigError, TrainingError
from spa.experiments.config import ExperimentConfig
from spa.experiments.train import make_loader
from spa.progress import progress as show_progress
from spa.recovery import Distiller

AUTO_CLASS = "AutoModelForCausalLM"
# Config attributes that hold the longest sequence a model's positions cover.
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx")
_PROBE_LENGTH = 8


@dataclass(frozen=True)
class LanguageModel:
    """A causal LM to start from and how a bundle tool can rebuild it.

    Args:
        model: the model (training mode).
        model_name: its `spa.models` name (None for a `transformers` directory).
        model_options: the builder's arguments (None for a `transformers` directory).
    """

    model: nn.Module
    model_name: str | None
    model_options: dict[str, Any] | None


def _key(config: ExperimentConfig) -> str:
    return "model.path" if config.model.name == "transformers" else "model.name"


def _what(config: ExperimentConfig) -> str:
    if config.model.name == "transformers":
        return f"the model in {config.model.path}"
    return f"model {config.model.name!r}"


def _max_positions(settings: dict[str, Any]) -> int | None:
    for key in _POSITION_KEYS:
        value = settings.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _check_positions(config: ExperimentConfig, settings: dict[str, Any], length: int) -> None:
    limit = _max_positions(settings)
    if limit is not None and length > limit:
        raise ConfigError(
            f"config key 'data.options.sequence_length': {length} is longer than the "
            f"{limit} positions of {_what(config)}; use at most {limit}"
        )


def _transformers_model(config: ExperimentConfig, length: int) -> nn.Module:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from spa.models.loading import load_transformers, read_transformers_config

    path = Path(config.model.path)
    if not path.is_dir():
        raise ConfigError(f"config key 'model.path': {path} is not a local model directory")
    document = read_transformers_config(path)
    model_type = document.get("model_type")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or document.get("is_encoder_decoder"):
        raise ConfigError(
            f"config key 'model.path': {path} holds a {model_type!r} model, not a decoder-only "
            "causal language model (Llama, Mistral, Qwen2, GPT-2, ...); data.name = "
            f"{config.data.name!r} trains next-token prediction"
        )
    _check_positions(config, document, length)
    return load_transformers(path, AUTO_CLASS)


def build_language_model(
    config: ExperimentConfig, vocab_size: int, sequence_length: int
) -> LanguageModel:
    """The config's causal LM, checked to fit the tokenizer and the sequence length.

    Args:
        config: the experiment config.
        vocab_size: tokens of the tokenizer (the default `vocab_size` of a registry model).
        sequence_length: tokens per block.

    Returns:
        The model (training mode) with how to rebuild it.

    Raises:
        ConfigError: for a model that is missing, not a causal LM, too small for the tokenizer
            or shorter than the sequence length (naming the key).
    """
    name, options = None, None
    if config.model.name == "transformers":
        model = _transformers_model(config, sequence_length)
    else:
        import inspect

        from spa.models import MODELS, create_model
        from spa.models.loading import load_model

        name, options = config.model.name, dict(config.model.options)
        if "vocab_size" in inspect.signature(MODELS.get(name)).parameters:
            options.setdefault("vocab_size", vocab_size)
        if config.model.weights is None:
            model = create_model(name, **options)
        else:
            model = load_model(config.model.weights, name=name, options=options).model
    settings = model.config.to_dict() if hasattr(model, "config") else {}
    _check_positions(config, settings, sequence_length)
    check_causal(model, config, vocab_size)
    return LanguageModel(model=model.train(), model_name=name, model_options=options)


def _logits(output: Any) -> Any:
    return getattr(output, "logits", output)


@torch.no_grad()
def check_causal(model: nn.Module, config: ExperimentConfig, vocab_size: int) -> None:
    """Refuse a model that is not a causal LM over (at least) the tokenizer's vocabulary.

    Runs the model on a few token ids, then again with the later half changed: a causal LM's
    logits at the earlier positions stay the same (to float tolerance), a bidirectional encoder's
    do not.

    Raises:
        ConfigError: naming `model.name` / `model.path` and what is wrong.
    """
    key, what = _key(config), _what(config)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (1, _PROBE_LENGTH), generator=generator).to(device)
    changed = ids.clone()
    half = _PROBE_LENGTH // 2
    changed[:, half:] = (changed[:, half:] + 1 + vocab_size // 2) % vocab_size
    training = model.training
    model.eval()
    try:
        first, second = _logits(model(input_ids=ids)), _logits(model(input_ids=changed))
    except Exception as error:  # any failure on token ids means: not a language model
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(
            f"config key {key!r}: {what} is not a causal language model (it fails on token ids: "
            f"{type(error).__name__}: {message})"
        ) from None
    finally:
        model.train(training)
    if not isinstance(first, torch.Tensor) or first.dim() != 3 or first.shape[:2] != ids.shape:
        raise ConfigError(
            f"config key {key!r}: {what} is not a causal language model (it returns no "
            "per-token logits for input_ids)"
        )
    if first.shape[-1] < vocab_size:
        raise ConfigError(
            f"config key {key!r}: {what} predicts {first.shape[-1]} tokens but the tokenizer has "
            f"{vocab_size}; use the model's own tokenizer (data.options.tokenizer)"
        )
    scale = 1.0 + float(first.abs().max())
    if not torch.allclose(first[:, :half], second[:, :half], rtol=0.0, atol=1e-5 * scale):
        raise ConfigError(
            f"config key {key!r}: {what} is not a causal (decoder-only) language model: its "
            "predictions depend on later tokens (an encoder such as BERT); causal-lm runs need "
            "a decoder (Llama, Mistral, Qwen2, GPT-2, ...)"
        )


def _moved(loader: Iterable[dict], device: str) -> Iterator[dict]:
    for batch in loader:
        yield {"input_ids": batch["input_ids"].to(device)}


def _call_on_ids(model: nn.Module, ids: torch.Tensor) -> Any:
    return model(input_ids=ids)


def train_lm_epoch(
    model: nn.Module,
    loader: Iterable[dict],
    optimizer: torch.optim.Optimizer,
    *,
    device: str = "cpu",
    max_batches: int | None = None,
    description: str = "train",
    distiller: Distiller | None = None,
) -> float:
    """Train one epoch on next-token prediction; return the mean loss per predicted token.

    With a `distiller`, the loss also follows the unpruned teacher (`spa.recovery`); the
    returned mean is the next-token loss.

    Raises:
        TrainingError: if a batch's loss is NaN or infinite (before it updates the weights).
    """
    model.train()
    total, tokens = 0.0, 0
    count = len(loader) if max_batches is None else min(max_batches, len(loader))
    progress = show_progress(_moved(loader, device), total=count, desc=description, leave=False)
    for index, batch in enumerate(progress):
        if max_batches is not None and index >= max_batches:
            break
        ids = batch["input_ids"]
        optimizer.zero_grad(set_to_none=True)
        output = model(input_ids=ids)
        loss = next_token_loss(_logits(output), ids)
        value = float(loss.detach())
        if distiller is not None:
            loss = distiller.loss(model, ids, output, loss, call=_call_on_ids)
        if not math.isfinite(float(loss.detach())):
            raise TrainingError(
                f"{description}: the loss became {float(loss.detach())} at batch {index + 1}; "
                "training stopped (lower train.lr)"
            )
        loss.backward()
        optimizer.step()
        predicted = ids[:, 1:].numel()
        total, tokens = total + value * predicted, tokens + predicted
    progress.close()
    return total / tokens if tokens else float("nan")


def evaluate_perplexity(model: nn.Module, blocks, batch_size: int, device: str = "cpu") -> float:
    """Perplexity (exp of the mean next-token cross-entropy) over every evaluation block."""
    loader = make_loader(blocks, batch_size, shuffle=False)
    return perplexity(model, _moved(loader, device))


def scoring_batches(
    blocks, batch_size: int, count: int, device: str = "cpu"
) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """The first `count` training batches as `(inputs, next tokens)` for the channel criteria:
    their default cross-entropy on these pairs is the next-token loss."""
    loader = make_loader(blocks, batch_size, shuffle=False)
    result = []
    for batch in _moved(loader, device):
        if len(result) >= count:
            break
        ids = batch["input_ids"]
        result.append(({"input_ids": ids[:, :-1]}, ids[:, 1:]))
    return result
