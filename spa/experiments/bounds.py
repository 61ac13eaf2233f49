"""Upper bounds on the config numbers that size memory, checked when a config is read.

Issue 24: `adapter.rank = 100000` passed 2 GB, `data.options.size = 100000`,
`model.options.num_classes = 1e9` and `train.latency_batch_size = 1e9` ended in raw allocation
errors (the last after 40 s of training). Each bound is far above any sensible value (the paper's
largest image is 224 px, ImageNet-21k has 21,841 classes, the widest supported layers 8,192
channels) and far below what exhausts memory; the message names the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spa.experiments._typecheck import config_key_error

# dotted config key -> largest accepted value
BOUNDS: dict[str, int] = {
    "adapter.rank": 8192,
    "data.options.size": 4096,
    "data.options.image_size": 4096,
    "model.options.num_classes": 1_000_000,
    "train.latency_batch_size": 4096,
}


def _value(config: Any, key: str) -> Any:
    """The value at dotted `key` of the config, None where it is not set."""
    if key == "adapter.rank":  # a field of the kind's own config (not every kind has one)
        return getattr(config.adapter.config, "rank", None)
    section, name, *option = key.split(".")
    node = getattr(getattr(config, section), name, None)
    if option:
        return node.get(option[0]) if isinstance(node, Mapping) else None
    return node


def check_bounds(config: Any) -> None:
    """Refuse a config number above its bound in `BOUNDS`, or a non-integer where one counts.

    Args:
        config: an `ExperimentConfig` being validated.

    Raises:
        ConfigError: naming the key, the value and the bound.
    """
    for key, bound in BOUNDS.items():
        value = _value(config, key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise config_key_error(key, f"must be an integer, got {value!r}")
        if not 1 <= value <= bound:
            raise config_key_error(key, f"must be between 1 and {bound:,}, got {value:,}")
