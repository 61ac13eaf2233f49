"""Exception hierarchy and warning category for spa.

Every error a user can cause is a `SpaError`; messages say what went wrong, where (layer path or
file), the offending value, what was expected and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "SpaError",
    "ConfigError",
    "RankError",
    "UnsupportedLayerError",
    "NoTargetsError",
    "BundleError",
    "TrainingError",
    "SpaWarning",
]


class SpaError(Exception):
    """Base class of every error raised by spa."""


class ConfigError(SpaError, ValueError):
    """A configuration value is invalid; the message names the field, value and allowed range."""


class RankError(ConfigError):
    """An adapter rank wider than every layer it would adapt; the message names the widest."""


class UnsupportedLayerError(SpaError, TypeError):
    """A layer cannot be adapted or pruned; the message names the layer and the supported types."""


class NoTargetsError(SpaError, ValueError):
    """A target selection matched no eligible layer."""


class BundleError(SpaError, ValueError):
    """A task bundle is damaged, of an unknown version, or was made from another base model."""


class TrainingError(SpaError, RuntimeError):
    """Training cannot go on, e.g. the loss became NaN or infinite; the message names the step."""


class SpaWarning(UserWarning):
    """A valid but surprising situation."""
