"""The runner's question-answering path: BERT-style models on SQuAD v1.1 with block pruning.

One run per seed is one step: SPLoPA (or block fine-pruning) trained with the automated gradual
(cubic) schedule from density 1 to `pruning.target_density` — `train.initial_epochs` of warm-up,
then `train.epochs_per_step` epochs of pruning — evaluated with the official exact match / F1.
The record's `accuracy` is F1 / 100, so QA runs share the tables and plots of image runs.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spa.accounting import count_learned_parameters
from spa.errors import ConfigError
from spa.experiments.build import adapt_model
from spa.experiments.config import ExperimentConfig

logger = logging.getLogger(__name__)

# SQuAD v1.1 file names per split; `data.options.train_file` / `eval_file` override them.
SPLIT_FILES = {"train": "train-v1.1.json", "val": "dev-v1.1.json", "test": "dev-v1.1.json"}
_QA_OPTIONS = ("max_length", "doc_stride", "train_file", "eval_file")


def _options(config: ExperimentConfig) -> dict[str, Any]:
    unknown = sorted(set(config.data.options) - set(_QA_OPTIONS))
    if unknown:
        raise ConfigError(
            f"config key 'data.options.{unknown[0]}': unknown for data.name = 'squad'; "
            f"allowed: {', '.join(_QA_OPTIONS)}"
        )
    return {"max_length": 384, "doc_stride": 128, **config.data.options}


def load_qa(config: ExperimentConfig) -> tuple[nn.Module, Any, list, list]:
    """The local `transformers` QA model and tokenizer, and the train / eval SQuAD examples.

    Raises:
        ConfigError: for a missing directory or file (naming the key and path).
    """
    if config.model.name != "transformers":
        raise ConfigError(
            "config key 'model.name': data.name = 'squad' needs model.name = 'transformers' "
            f"and model.path, got {config.model.name!r}"
        )
    path = Path(config.model.path)
    if not path.is_dir():
        raise ConfigError(f"config key 'model.path': {path} is not a local model directory")
    if config.data.root is None:
        raise ConfigError("config key 'data.root': the folder holding the SQuAD JSON files")
    options = _options(config)
    root = Path(config.data.root)
    train_file = root / options.get("train_file", SPLIT_FILES[config.data.train_split])
    eval_file = root / options.get("eval_file", SPLIT_FILES[config.data.eval_split])
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from spa.data.squad import read_squad

    model = AutoModelForQuestionAnswering.from_pretrained(str(path), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return model, tokenizer, read_squad(train_file), read_squad(eval_file)


def _prepare(model: nn.Module, config: ExperimentConfig) -> nn.Module:
    if config.adapter.method == "splopa":
        return adapt_model(model, config)
    from spa.adapters import BlockFinePruningConfig, adapt

    adapter = config.adapter
    block_config = BlockFinePruningConfig(
        block_shape=tuple(adapter.block_shape),
        target_modules=adapter.target_modules or r"encoder",
        exclude_modules=adapter.exclude_modules,
        head_modules=[config.model.head],
    )
    return adapt(model, block_config)


def run_qa_seed(
    config: ExperimentConfig, seed_dir: Path, seed: int, labels: dict[str, Any]
) -> dict[str, Any]:
    """Train, prune and evaluate one seed; save the task bundle; return its density record.

    Args:
        config: the experiment config (data.name = "squad").
        seed_dir: the seed's folder.
        seed: the seed (global generators are seeded by the caller).
        labels: table labels to put in the record.

    Returns:
        The density record (step 1, the target density).
    """
    from spa.pruning.block_compaction import compact_bert
    from spa.pruning.block_criteria import create_block_criterion
    from spa.pruning.gradual import GradualBlockPruner, GradualPruningConfig
    from spa.qa import QATrainingConfig, evaluate_qa, train_qa
    from spa.qa.train import steps_per_epoch
    from spa.tasks import save_task

    options = _options(config)
    model, tokenizer, train_examples, eval_examples = load_qa(config)
    base = copy.deepcopy(model).eval()
    model = _prepare(model, config)
    train = config.train
    training = QATrainingConfig(
        epochs=train.initial_epochs + train.epochs_per_step,
        batch_size=config.data.batch_size,
        learning_rate=train.lr,
        weight_decay=train.weight_decay,
        max_length=options["max_length"],
        doc_stride=options["doc_stride"],
        seed=seed,
    )
    from spa.qa.features import prepare_train_features

    features = prepare_train_features(
        train_examples, tokenizer, options["max_length"], options["doc_stride"]
    )
    per_epoch = steps_per_epoch(len(features), config.data.batch_size)
    schedule = GradualPruningConfig(
        final_density=config.pruning.target_density,
        warmup_steps=train.initial_epochs * per_epoch,
        pruning_steps=max(1, train.epochs_per_step * per_epoch),
        scope=config.pruning.ranking,
    )
    pruner = GradualBlockPruner(model, create_block_criterion(config.pruning.criterion), schedule)
    losses = train_qa(model, tokenizer, train_examples, training, pruner=pruner)
    pruner.finish()
    result = evaluate_qa(
        model,
        tokenizer,
        eval_examples,
        max_length=options["max_length"],
        doc_stride=options["doc_stride"],
        batch_size=config.data.eval_batch_size,
    )
    compacted, report = compact_bert(model, sequence_length=options["max_length"])
    step_dir = seed_dir / f"step-01-density-{config.pruning.target_density:.3f}"
    bundle = save_task(model, step_dir / "task.safetensors", base_model=base)
    example = {"input_ids": torch.ones(1, options["max_length"], dtype=torch.long)}
    compacted.eval()
    with torch.inference_mode():
        compacted(**example)
        start = time.perf_counter()
        compacted(**example)
        latency = (time.perf_counter() - start) * 1e3
    return {
        "event": "density",
        **labels,
        "step": 1,
        "target_density": config.pruning.target_density,
        "density": pruner.density(),
        "accuracy": result.f1 / 100,
        "exact_match": result.exact_match,
        "f1": result.f1,
        "loss": losses[-1],
        "dparams": count_learned_parameters(model),
        "params": report.parameters_after,
        "flops": report.flops_after,
        "macs": report.flops_after // 2,
        "latency_ms": latency,
        "bundle_bytes": bundle.size_bytes,
        "bundle": str((step_dir / "task.safetensors").relative_to(seed_dir)),
    }
