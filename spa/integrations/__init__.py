"""Integrations with other training frameworks: `transformers.Trainer` (`SpaPruningCallback`)."""

from spa.integrations.trainer import (
    BlockSchedule,
    ChannelSchedule,
    DensityRecord,
    SpaPruningCallback,
    compact_with_optimizer,
)

__all__ = [
    "BlockSchedule",
    "ChannelSchedule",
    "DensityRecord",
    "SpaPruningCallback",
    "compact_with_optimizer",
]
