"""The runner's pruning stage: channel groups, scoring and masking at a target density."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from spa.experiments.config import PruningConfig
from spa.pruning import (
    ChannelMasks,
    ChannelPruningConfig,
    apply_masks,
    channel_groups,
    flops_profile,
    prune_step,
)


class ChannelPruner:
    """Prunes one adapted model's channels step by step and remembers the masks it applied.

    Pruning only sets masks (the model keeps its tensors and parameters, so training and the
    optimiser continue unchanged); the masks are returned for the checkpoint because the masks
    on norms and the head are non-persistent hooks that `state_dict` does not hold.

    Args:
        model: the adapted model (layers of a kind that prunes channels).
        example_inputs: a batch for tracing the channel groups.
        config: the experiment's pruning section.
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, config: PruningConfig):
        self.groups = channel_groups(model, example_inputs, units=config.units)
        self.config = ChannelPruningConfig(
            criterion=config.criterion,
            ranking=config.ranking,
            min_channels=config.min_channels,
            round_to=config.round_to,
            num_batches=config.scoring_batches,
            units=config.units,
            target=config.target,
            cost=config.cost,
        )
        # A compute budget weights each layer by the positions it runs at (measured once).
        self.macs = (
            flops_profile(model, self.groups, example_inputs)
            if self.config.needs_macs_profile
            else None
        )
        self._masks: ChannelMasks | None = None

    def prune_to(
        self, model: nn.Module, density: float, data: Iterable, reduce_fn=None
    ) -> ChannelMasks:
        """Score the channels on `data` and mask `model` down to `density` (in place).

        Args:
            model: the model the pruner was built for.
            density: target fraction of the prunable weights kept.
            data: `(inputs, labels)` batches for data-based criteria.
            reduce_fn: applied to the raw criterion statistics before ranking (e.g. an
                all-reduce over ranks); identity if None.

        Returns:
            The masks applied.
        """
        self._masks = prune_step(
            model, self.groups, density, self.config, data=data, reduce_fn=reduce_fn, macs=self.macs
        )
        return self._masks

    def masks(self) -> ChannelMasks | None:
        """The masks of the last step (None before the first)."""
        return self._masks

    def restore(self, model: nn.Module, masks: ChannelMasks | None) -> None:
        """Re-apply checkpointed masks to `model` (after `load_state_dict`)."""
        if masks:
            apply_masks(model, masks)
        self._masks = masks
