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


def criteria_for(pruning: str) -> tuple[str, ...]:
    """The criteria that prune what an adapter kind prunes ("channel", "block"; none for
    "none")."""
    if pruning == "channel":
        return channel_criteria()
    if pruning == "block":
        return block_criteria()
    return ()
