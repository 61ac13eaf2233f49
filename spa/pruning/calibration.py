"""Block-by-block calibration, as structured LLM pruners do it (FLAP, Wanda-sp, SliceGPT).

The inputs of the first transformer block are captured on every calibration batch (the model
runs up to that block and stops); then block `i` runs on all batches, hooks on its layers
collect what a criterion needs, and its outputs become block `i + 1`'s inputs. At any time
only one block's activations (its inputs for every batch) are held, and a block's weights are
needed only while it runs, which is what lets `spa.tasks.streaming` load one block at a time.

Everything a block is called with besides the hidden states (attention mask, rotary position
embeddings, position ids) is captured at the first block and passed to every block unchanged;
a key/value cache is dropped (calibration needs none).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from spa._batch import call_model
from spa.errors import ConfigError
from spa.families import block_layouts, describe
from spa.pruning._layers import batches

# One call of a block: positional and keyword arguments, the hidden states first.
BlockCall = tuple[tuple, dict]


class _Captured(Exception):
    """Raised by the pre-hook of the first block to stop the model once its inputs are seen."""

    def __init__(self, args: tuple, kwargs: dict) -> None:
        super().__init__("first block reached")
        self.call = (args, kwargs)


def sequential_blocks(model: nn.Module) -> list[str] | None:
    """The paths of the transformer blocks of `model` if they run one after another.

    Args:
        model: any model (wrapped or adapted).

    Returns:
        The block paths in order, when the model is of a described family and its blocks are
        the items 0..n-1 of one container (so block `i`'s output is block `i + 1`'s input);
        None otherwise (no family, stages with other modules between them, as in Swin, or
        blocks that pass each other more than hidden states, as T5's position bias).
    """
    family = describe(model)
    if family is None or family.attention.tied_heads:
        return None  # tied heads: blocks pass more than hidden states (T5's position bias)
    paths = [layout.path for layout in block_layouts(model, family)]
    parents = {path.rpartition(".")[0] for path in paths}
    indices = [path.rpartition(".")[2] for path in paths]
    if len(parents) != 1 or indices != [str(i) for i in range(len(paths))]:
        return None
    return paths


def inside(path: str, blocks: Sequence[str]) -> int | None:
    """The index of the block holding the module at `path`, or None."""
    for index, block in enumerate(blocks):
        if path.startswith(block + "."):
            return index
    return None


def capture_inputs(
    model: nn.Module, first_block: nn.Module, data: Iterable, num_batches: int | None = None
) -> list[BlockCall]:
    """Run `model` on each calibration batch up to `first_block` and keep that block's inputs.

    `first_block`'s weights are never used (they may still be on the meta device).

    Args:
        model: the model (eval mode is the caller's business).
        first_block: its first transformer block.
        data: calibration batches, as for `spa.pruning.score`.
        num_batches: batches to use (None = all).

    Returns:
        Per batch, the block's positional and keyword arguments (a cache dropped).

    Raises:
        ConfigError: if a batch never reaches the block.
    """

    def hook(module, args, kwargs):
        raise _Captured(args, kwargs)

    calls = []
    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for inputs, _ in batches(data, num_batches):
                try:
                    call_model(model, inputs)
                except _Captured as captured:
                    calls.append(_without_cache(*captured.call))
                else:
                    raise ConfigError("calibration: the model ran without calling its first block")
    finally:
        handle.remove()
    if not calls:
        raise ConfigError("calibration: no calibration batch in data")
    return calls


def _is_cache(value: object) -> bool:
    return hasattr(value, "get_seq_length")  # a transformers `Cache`


def _without_cache(args: tuple, kwargs: dict) -> BlockCall:
    # GPT-2 passes its cache positionally: kept, a block run twice on one call (Taylor block by
    # block) would attend to the keys of its first run as well.
    args = tuple(None if _is_cache(value) else value for value in args)
    kwargs = dict(kwargs)
    for key, value in kwargs.items():
        if _is_cache(value) or re.fullmatch(r"(layer_)?past(_key_values?)?", key):
            kwargs[key] = None  # a key/value cache: calibration never reuses one
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    return args, kwargs


def hidden_states(call: BlockCall) -> torch.Tensor:
    """The hidden states of one block call (first positional argument, or `hidden_states`)."""
    args, kwargs = call
    return args[0] if args else kwargs["hidden_states"]


def run_block(block: nn.Module, calls: Sequence[BlockCall]) -> list[BlockCall]:
    """Run `block` on every call and return the calls for the next block (its outputs in).

    Args:
        block: a transformer block (its weights loaded).
        calls: from `capture_inputs` or a previous `run_block`.

    Returns:
        The same calls with the hidden states replaced by this block's outputs.
    """
    result = []
    with torch.no_grad():
        for args, kwargs in calls:
            output = block(*args, **kwargs)
            hidden = output[0] if isinstance(output, tuple | list) else output
            if args:
                result.append(((hidden, *args[1:]), kwargs))
            else:
                result.append((args, {**kwargs, "hidden_states": hidden}))
    return result
