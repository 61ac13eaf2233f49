"""The causal language modelling task type: next-token prediction, perplexity, head/FFN pruning.

Data: `data.name = "text"` (local files) or `"embedded"` (CPython's `pydoc_data.topics`), cut
into blocks of `data.options.sequence_length` tokens (see `spa.experiments.lm_data`); model: a
`spa.models` network such as `tiny_llama` or a local `transformers` causal LM (`model.name =
"transformers"`, `model.path`), checked to be causal (`spa.experiments.lm_model`); loss: the
mean next-token cross-entropy; metric: perplexity on the evaluation text, recorded as it is
(`metric_name = "perplexity"`, lower is better; the report shows it unscaled, not as a percent).

Adapter kinds: every kind that prunes channels, or none (`capabilities`); the LM head is never
adapted and stays frozen with the embeddings it is usually tied to unless the kind trains every
weight (`trainable = ["all"]`, as fine-pruning does), so an adapter's bundle holds the adapters
and norms only. Pruning follows the iterative schedule: before each step after the first,
attention heads (with grouped-query attention a key/value head with its query heads), FFN
neurons and, if asked for, the hidden size (`pruning.units`) are scored on training blocks and
masked to the step's density. Runs may be distributed (`torchrun`): DDP training on sharded
global batches, identical masks on every rank. The deployable model is the compacted, fused
copy; FLOPs and latency are per sequence of `sequence_length` tokens.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spa.adapters import adapt
from spa.errors import ConfigError
from spa.experiments import measure
from spa.experiments.build import adapter_config
from spa.experiments.config import ExperimentConfig, ModelConfig
from spa.experiments.distributed_run import prune_on_all_ranks
from spa.experiments.lm_data import (
    DATA_NAMES,
    TextData,
    load_text_data,
    text_options,
    tokenizer_problem,
)
from spa.experiments.lm_model import (
    build_language_model,
    evaluate_perplexity,
    scoring_batches,
    train_lm_epoch,
)
from spa.experiments.pruning_steps import ChannelPruner
from spa.experiments.task_types.base import TASK_TYPES, Capabilities, Evaluation, Step
from spa.experiments.task_types.channel_session import ChannelSessionSteps
from spa.experiments.train import (
    make_optimizer,
)
from spa.recovery import Teacher


def _without_head(adapter: Any) -> Any:
    """The kind's config with its "head" group dropped from `trainable`: the LM head is tied to
    the input embeddings in most LMs, so it trains only where every weight does ("all")."""
    trainable = tuple(group for group in adapter.trainable if group != "head")
    return dataclasses.replace(adapter, trainable=trainable)


def _head(model: nn.Module, config: ExperimentConfig) -> str:
    """The LM head's module path: `model.head` if the model has it; with the default head name
    (an image classifier's "fc") the model's output embedding (`transformers`' LM head)."""
    names = {module: name for name, module in model.named_modules()}
    try:
        model.get_submodule(config.model.head)
        return config.model.head
    except AttributeError:
        pass
    output = getattr(model, "get_output_embeddings", lambda: None)()
    if config.model.head != ModelConfig().head or output is None or output not in names:
        raise ConfigError(
            f"config key 'model.head': the model has no module {config.model.head!r} and no "
            "output embedding; set model.head to the module path of the LM head"
        )
    return names[output]


@dataclass
class CausalLMSession(ChannelSessionSteps):
    """One seed of a causal-LM run (see `SeedSession`)."""

    config: ExperimentConfig
    seed: int
    data: TextData
    example: torch.Tensor  # (1, sequence_length) token ids
    base: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    pruner: ChannelPruner | None
    model_name: str | None = None
    model_options: dict[str, Any] | None = field(default=None)
    training: nn.Module | None = field(default=None, repr=False)  # DDP wrapper or `model`
    teacher: Teacher | None = field(default=None, repr=False)  # with distillation

    def prune(self, step: Step) -> None:
        """Score the units (`pruning.units`) on training blocks and mask down to the step's
        density (in a distributed run every rank scores the same blocks)."""
        self.take_teacher(step)
        if step.index == 0 or self.pruner is None:
            return
        count = self.config.pruning.scoring_batches
        batches = scoring_batches(
            self.data.train, self.config.data.batch_size, count, self.config.train.device
        )
        prune_on_all_ranks(self.model, self.pruner, step.target_density, batches)

    def train_epoch(self, step: Step, epoch: int) -> dict[str, Any]:
        """One epoch of next-token training (in a distributed run each rank trains on its share
        of every global batch, gradients averaged by DDP); returns lr and the mean loss per
        token of this rank's share."""
        loss, lr = self.run_epoch(step, epoch, self.data.train, train_lm_epoch)
        return {"lr": lr, "loss": loss}

    def evaluate(self) -> Evaluation:
        """Perplexity on the evaluation blocks; the loss is its logarithm (nats per token)."""
        value = evaluate_perplexity(
            self.model, self.data.eval, self.config.data.eval_batch_size, self.config.train.device
        )
        extras = {"perplexity": value, "eval_tokens": self.data.eval.blocks[:, 1:].numel()}
        return Evaluation(metric=value, loss=math.log(value), extras=extras)


class CausalLMTask:
    """Causal language modelling with head/FFN/hidden-size pruning (see `TaskType`)."""

    name = "causal-lm"
    metric_name = "perplexity"
    supports_distributed = True
    capabilities = Capabilities(
        models="language models", pruning=("channel", "none"), schedules=("iterative", "none")
    )

    def data_names(self) -> tuple[str, ...]:
        """Local text files ("text") and the embedded Python documentation ("embedded")."""
        return DATA_NAMES

    def config_problem(self, config: ExperimentConfig) -> str | None:
        """A tokenizer (a directory or the byte fallback)."""
        return tokenizer_problem(config)

    def start(self, config: ExperimentConfig, seed: int) -> CausalLMSession:
        """Read and tokenize the text; build, check and adapt the model; optimiser and pruner."""
        if config.model.name == "transformers" and not Path(config.model.path).is_dir():
            raise ConfigError(
                f"config key 'model.path': {config.model.path} is not a local model directory"
            )
        options = text_options(config)
        data = load_text_data(config, options)
        built = build_language_model(config, data.tokenizer.vocab_size, options.sequence_length)
        device = config.train.device
        base = measure.freeze(copy.deepcopy(built.model))
        model = built.model
        adapt(model, _without_head(adapter_config(config.adapter, _head(model, config))))
        model.to(device)
        train = config.train
        optimizer = make_optimizer(
            model, train.optimizer, train.lr, train.momentum, train.weight_decay
        )
        example = data.eval.blocks[:1].to(device)
        prunes = bool(config.pruning.density_steps())
        return CausalLMSession(
            config=config,
            seed=seed,
            data=data,
            example=example,
            base=base,
            model=model,
            optimizer=optimizer,
            pruner=ChannelPruner(model, example, config.pruning) if prunes else None,
            model_name=built.model_name,
            model_options=built.model_options,
        )


TASK_TYPES.register("causal-lm")(CausalLMTask())
