"""Integrations with other training frameworks: `transformers.Trainer` (`SpaPruningCallback`)."""

from spa.integrations.trainer import (
    BlockSchedule,
    ChannelSchedule,
    DensityRecord,
    SpaPruningCallback,
)

__all__ = ["BlockSchedule", "ChannelSchedule", "DensityRecord", "SpaPruningCallback"]
