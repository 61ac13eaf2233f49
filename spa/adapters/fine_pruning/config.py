"""`FinePruningConfig`: channel masks, no adapter; the weights themselves train."""

from __future__ import annotations

from dataclasses import dataclass

from spa.adapters.config import ModuleSelection, check_common


@dataclass(frozen=True, kw_only=True)
class FinePruningConfig:
    """Fine-pruning: layers get masks but no adapter; their weights are trained directly.

    Args:
        target_modules: as in `SPLoRAConfig`.
        exclude_modules: as in `SPLoRAConfig`.
        trainable: as in `SPLoRAConfig`; by default every parameter trains.
        head_modules: as in `SPLoRAConfig`.
    """

    target_modules: ModuleSelection = None
    exclude_modules: ModuleSelection = None
    trainable: tuple[str, ...] = ("all",)
    head_modules: ModuleSelection = None

    def __post_init__(self) -> None:
        check_common(self)
