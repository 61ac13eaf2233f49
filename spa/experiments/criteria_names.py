"""The names of the registered pruning criteria, read lazily (the registries import torch)."""

from __future__ import annotations


def channel_criteria() -> tuple[str, ...]:
    """Names of the registered channel criteria (`spa.pruning.CRITERIA`)."""
    from spa.pruning.criteria import CRITERIA

    return tuple(CRITERIA.names())


def block_criteria() -> tuple[str, ...]:
    """Names of the registered block criteria (`spa.pruning.block_criteria.BLOCK_CRITERIA`)."""
    from spa.pruning.block_criteria import BLOCK_CRITERIA

    return tuple(BLOCK_CRITERIA.names())
