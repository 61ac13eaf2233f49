"""Prune a `transformers` model block by block from sharded safetensors (`prune_shards`).

A model larger than free memory is pruned one decoder block at a time: the skeleton holds only
the embeddings, final norm and LM head (`spa.tasks.skeleton`); the calibration batches run to
the first block (`spa.pruning.calibration`); then each block is loaded from its shards, run on
the calibration activations with hooks on its layers (the criterion's statistics), its heads
and FFN neurons are chosen, it is compacted, written to the output shards and dropped, and its
(unpruned) outputs become the next block's inputs. Memory holds the layers outside the blocks,
one block (twice while it is compacted), one output shard and one block's activations.

Ranking is local, per block: every block keeps the same fraction of heads and of FFN neurons
(the fraction `compute_masks(..., ranking="local")` finds for one block), so every layer keeps
the same counts and the result is an ordinary `transformers` directory (one head / FFN count
in its config). On a model whose blocks have the same shapes, as a `transformers` config
implies, this equals in-memory pruning of all blocks at once with the same criterion and
`ranking="local"` (a fine-pruning adapter on every Linear of the blocks), masks and outputs.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import torch
from torch import nn

from spa.errors import ConfigError
from spa.families import config_values
from spa.pruning import apply_masks, compact, compute_masks, unit_groups
from spa.pruning.activation import release, watch
from spa.pruning.calibration import BlockCall, capture_inputs, inside, run_block
from spa.pruning.channel_group import ChannelGroup, LayerInfo
from spa.pruning.criteria import CRITERIA, aggregate
from spa.pruning.masking import ChannelMasks, RoundTo
from spa.tasks.pretrained import _install
from spa.tasks.shards import INDEX, SINGLE, ShardWriter
from spa.tasks.skeleton import Skeleton

logger = logging.getLogger(__name__)
STREAM_UNITS = ("heads", "ffn")


@dataclass
class StreamReport:
    """What `prune_shards` did.

    Args:
        destination: the written directory.
        blocks: blocks pruned.
        config: the config attributes written (heads, key/value heads, FFN width, head size).
        masks: the channel masks chosen, per module path (as `compute_masks` returns them).
        seconds: wall time per stage ("open", "calibrate", "load", "score", "compact",
            "write", "finish").
        bytes_written: tensor bytes in the output shards.
    """

    destination: Path
    blocks: int = 0
    config: dict[str, int] = field(default_factory=dict)
    masks: ChannelMasks = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    bytes_written: int = 0


@dataclass
class _Pass:
    """What every block of one `prune_shards` call shares."""

    skeleton: Skeleton
    function: Callable  # the registered criterion
    choice: Mapping  # compute_masks arguments
    report: StreamReport
    clock: _Clock


class _Clock:
    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds, self.start = seconds, time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self.start
        self.start = now


def prune_shards(
    source: str | Path,
    destination: str | Path,
    data: Iterable,
    density: float,
    *,
    criterion: str = "activation",
    units: Sequence[str] = STREAM_UNITS,
    num_batches: int | None = None,
    min_channels: int = 1,
    round_to: RoundTo = None,
    max_shard_bytes: int = 2**29,
    overwrite: bool = False,
) -> StreamReport:
    """Prune the `transformers` model in `source` block by block and write it to `destination`.

    Args:
        source: a `transformers` directory (config.json + sharded or single safetensors).
        destination: the directory to write (config.json, shards, index, and the source's
            other files such as the tokenizer); written beside it, then renamed into place.
        data: calibration batches (token ids, dicts of model inputs or `(inputs, targets)`).
        density: fraction of the blocks' Linear weights to keep, in (0, 1].
        criterion: a `CRITERIA` name computable per block ("activation", "fluctuation",
            "weight"; see `spa.pruning.criteria.per_block`).
        units: "heads" and/or "ffn" (the hidden size crosses blocks and is not streamed).
        num_batches: calibration batches to use (None = all).
        min_channels: never keep fewer heads / neurons per block.
        round_to: keep counts multiples of this, or per unit (`compute_masks`).
        max_shard_bytes: size at which an output shard is written (memory holds about twice
            this while a shard is serialised).
        overwrite: replace a non-empty `destination`.

    Returns:
        A `StreamReport` with the masks, the written config values and stage times.

    Raises:
        ConfigError: for a criterion that needs the whole model, other units, a directory
            that cannot be streamed, or a non-empty destination without `overwrite`.
    """
    function = CRITERIA.get(criterion)
    if not getattr(function, "per_block", False):
        raise ConfigError(
            f"prune_shards: criterion {criterion!r} needs the whole model (a loss at its "
            f"output); use one computable per block: "
            f"{', '.join(n for n in CRITERIA.names() if getattr(CRITERIA.get(n), 'per_block', 0))}"
        )
    if not units or any(unit not in STREAM_UNITS for unit in units):
        raise ConfigError(f"prune_shards: units must be among {STREAM_UNITS}, got {units!r}")
    target = Path(destination)
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not overwrite)):
        raise ConfigError(f"prune_shards: {target} exists and is not empty; pass overwrite=True")
    report = StreamReport(destination=target)
    clock = _Clock(report.seconds)
    skeleton = Skeleton.open(source)
    groups = unit_groups(skeleton.model, skeleton.family, units)
    clock.lap("open")
    calls = capture_inputs(
        skeleton.model, skeleton.model.get_submodule(skeleton.blocks[0]), data, num_batches
    )
    clock.lap("calibrate")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        writer = ShardWriter(temporary, max_shard_bytes)
        state = skeleton.model.state_dict()  # outside the blocks: the tensors already loaded
        writer.add({key: state[key] for key in skeleton.outside})
        del state
        clock.lap("write")
        choice = dict(density=density, min_channels=min_channels, round_to=round_to)
        run = _Pass(skeleton, function, choice, report, clock)
        for index in range(len(skeleton.blocks)):
            mine = [g for g in groups if inside(g.root, skeleton.blocks) == index]
            calls = _prune_block(run, index, mine, calls)
            writer.add(_block_tensors(skeleton, index))
            skeleton.unload_block(index)
            clock.lap("write")
        writer.close()
        report.bytes_written = writer.total_bytes
        _finish(skeleton, Path(source), temporary, report)
        _install(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    clock.lap("finish")
    return report


def _prune_block(
    run: _Pass, index: int, groups: Sequence[ChannelGroup], calls: list[BlockCall]
) -> list[BlockCall]:
    """Load, score, mask and compact block `index`; returns the next block's calls."""
    skeleton, function, report, clock = run.skeleton, run.function, run.report, run.clock
    block = skeleton.load_block(index)
    clock.lap("load")
    model = skeleton.model
    role = getattr(function, "channel_role", "out")
    names = sorted({m.name for g in groups for m in g.members if m.role == role})
    layers = {name: model.get_submodule(name) for name in names}
    moments = watch(layers)
    try:
        following = run_block(block, calls)
    finally:
        release(moments)
    statistics = function(model, layers, data=None, moments=moments)
    counted = _counted(model, skeleton.blocks[index], groups)
    scores = aggregate(counted, statistics, role)
    masks = compute_masks(counted, scores, ranking="local", **run.choice)
    clock.lap("score")
    apply_masks(model, masks)
    compact(model)
    report.masks.update(masks)
    report.blocks += 1
    clock.lap("compact")
    return following


def _counted(model: nn.Module, block: str, groups: Sequence[ChannelGroup]) -> list[ChannelGroup]:
    """The block's groups with every Linear of the block counted toward density, as a
    fine-pruning adapter on each of them would count it (`spa.pruning.masking`)."""
    table = {}
    for name, module in model.get_submodule(block).named_modules(prefix=block):
        if isinstance(module, nn.Linear):
            out, columns = module.weight.shape
            table[name] = LayerInfo(name, (True,) * out, (True,) * columns, 1, out * columns)
    layers = MappingProxyType(table)
    return [
        dataclasses.replace(
            group,
            layers=layers,
            members=tuple(
                dataclasses.replace(m, is_adapter=m.name in table and m.role in ("in", "out"))
                for m in group.members
            ),
        )
        for group in groups
    ]


def _block_tensors(skeleton: Skeleton, index: int) -> dict[str, torch.Tensor]:
    path = skeleton.blocks[index]
    state = skeleton.model.get_submodule(path).state_dict(prefix=path + ".")
    return {key: state[key] for key in skeleton.block_keys(index) if key in state}


def _finish(skeleton: Skeleton, source: Path, temporary: Path, report: StreamReport) -> None:
    """Write the config with the new per-layer counts and copy the source's other files."""
    config = copy.deepcopy(skeleton.config)
    report.config = config_values(skeleton.model, skeleton.family, config)
    for key, value in report.config.items():
        setattr(config, key, value)
    config.save_pretrained(temporary)
    skipped = {"config.json", INDEX, SINGLE}
    for item in source.iterdir():
        if item.is_file() and item.name not in skipped and item.suffix != ".safetensors":
            shutil.copy2(item, temporary / item.name)
    os.chmod(temporary, 0o755)


def calibration_batches(
    directory: str | Path,
    text: str | Path | None = None,
    batches: int = 2,
    tokens: int = 128,
    seed: int = 0,
) -> list[torch.Tensor]:
    """Calibration token ids `(1, tokens)` for the model in `directory`.

    Args:
        directory: a `transformers` directory (its tokenizer is used for `text`).
        text: a UTF-8 text file, tokenised with the directory's tokenizer and cut into
            consecutive windows; None gives seeded random token ids (a smoke test only: scores
            from random tokens say little about a real model).
        batches: number of batches.
        tokens: tokens per batch.
        seed: seed of the random ids.

    Returns:
        The batches.

    Raises:
        ConfigError: if the text is too short or the directory has no tokenizer.
    """
    import transformers

    if text is None:
        vocab = transformers.AutoConfig.from_pretrained(directory).vocab_size
        generator = torch.Generator().manual_seed(seed)
        return [torch.randint(0, vocab, (1, tokens), generator=generator) for _ in range(batches)]
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{directory}: no tokenizer for --text ({error})") from None
    ids = tokenizer(Path(text).read_text(encoding="utf-8"), return_tensors="pt").input_ids[0]
    if ids.numel() < batches * tokens:
        raise ConfigError(
            f"{text}: {ids.numel()} tokens, calibration needs {batches} x {tokens}; pass fewer "
            "--batches or --tokens"
        )
    return [ids[i * tokens : (i + 1) * tokens].unsqueeze(0) for i in range(batches)]
