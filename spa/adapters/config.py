"""Adapter configurations: frozen, validated dataclasses unpacked by `spa.adapt`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from spa.errors import ConfigError

# Parameter groups, besides adapters, that stay trainable after `adapt`.
TrainableGroup = Literal["norm", "head", "bias", "all"]
TRAINABLE_GROUPS = ("norm", "head", "bias", "all")
ModuleSelection = str | list[str] | tuple[str, ...] | None


def _check_selection(field: str, value: ModuleSelection) -> None:
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f"{field} must be a regex string, a list of name suffixes or None, got {value!r}"
        )


def _check_trainable(value: tuple[str, ...]) -> None:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(f"trainable must be a tuple of group names, got {value!r}")
    unknown = [v for v in value if v not in TRAINABLE_GROUPS]
    if unknown:
        raise ConfigError(
            f"trainable has unknown group(s) {unknown}; allowed: {', '.join(TRAINABLE_GROUPS)}"
        )


def _check_common(config) -> None:
    _check_selection("target_modules", config.target_modules)
    _check_selection("exclude_modules", config.exclude_modules)
    _check_selection("head_modules", config.head_modules)
    _check_trainable(config.trainable)


def _check_positive(field: str, value: float, kind: type = int) -> None:
    if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(f"{field} must be an integer > 0, got {value!r}")
    if not value > 0:
        raise ConfigError(f"{field} must be > 0, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class SPLoRAConfig:
    """Channel-pruning low-rank adapters (Eq. 4) on Linear and Conv1d/2d/3d layers.

    Plain LoRA (no pruning) is this adapter with all-ones masks.

    Args:
        rank: adapter rank `r` (> 0), used unless `rank_fraction` is set.
        rank_fraction: if set, each layer's rank is `max(1, round(rank_fraction * out))`, with
            `out` the layer's output channels; in (0, 1].
        init_range: `W_up ~ U(-init_range, init_range)`; > 0.
        target_modules: regex searched in each module's dotted name, or a list of name suffixes;
            None selects every eligible layer except the task head.
        exclude_modules: same forms; matching layers are left untouched.
        trainable: other parameter groups that stay trainable: "norm" (normalisation affine
            parameters), "head" (the task head), "bias" (every bias), "all".
        head_modules: the task head (regex or suffixes); None means the last `nn.Linear`.
    """

    rank: int = 8
    rank_fraction: float | None = None
    init_range: float = 1e-4
    target_modules: ModuleSelection = None
    exclude_modules: ModuleSelection = None
    trainable: tuple[str, ...] = ("norm", "head")
    head_modules: ModuleSelection = None

    def __post_init__(self) -> None:
        _check_positive("rank", self.rank)
        if self.rank_fraction is not None and not 0 < self.rank_fraction <= 1:
            raise ConfigError(f"rank_fraction must be in (0, 1], got {self.rank_fraction!r}")
        _check_positive("init_range", self.init_range, float)
        _check_common(self)


@dataclass(frozen=True, kw_only=True)
class SPLoPAConfig:
    """Block-pruning low-rank prototype adapters (Eq. 6) on Linear layers.

    Args:
        block_shape: `(p, q)` rows and columns of a block; both > 0.
        num_prototypes: `R` (> 0).
        prototype_rank: `r` of each prototype (> 0).
        shared_prototypes: share one prototype bank across all adapted layers.
        init_range: block weights `B ~ U(-init_range, init_range)`; > 0.
        target_modules: as in `SPLoRAConfig`.
        exclude_modules: as in `SPLoRAConfig`.
        trainable: as in `SPLoRAConfig`.
        head_modules: as in `SPLoRAConfig`.
    """

    block_shape: tuple[int, int] = (32, 32)
    num_prototypes: int = 64
    prototype_rank: int = 1
    shared_prototypes: bool = False
    init_range: float = 1e-4
    target_modules: ModuleSelection = None
    exclude_modules: ModuleSelection = None
    trainable: tuple[str, ...] = ("norm", "head")
    head_modules: ModuleSelection = None

    def __post_init__(self) -> None:
        shape = self.block_shape
        if (
            not isinstance(shape, tuple | list)
            or len(shape) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)
        ):
            raise ConfigError(f"block_shape must be two positive integers (p, q), got {shape!r}")
        object.__setattr__(self, "block_shape", tuple(shape))
        _check_positive("num_prototypes", self.num_prototypes)
        _check_positive("prototype_rank", self.prototype_rank)
        _check_positive("init_range", self.init_range, float)
        _check_common(self)


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
        _check_common(self)


AdapterConfig = SPLoRAConfig | SPLoPAConfig | FinePruningConfig
