"""`SPLoPAConfig`: block-pruning low-rank prototype adapters (Eq. 6)."""

from __future__ import annotations

from dataclasses import dataclass

from spa.adapters.config import ModuleSelection, check_common, check_positive
from spa.errors import ConfigError


def check_block_shape_field(shape: object) -> tuple[int, int]:
    """`shape` as a `(p, q)` tuple of positive integers.

    Raises:
        ConfigError: naming the value.
    """
    if (
        not isinstance(shape, tuple | list)
        or len(shape) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)
    ):
        raise ConfigError(f"block_shape must be two positive integers (p, q), got {shape!r}")
    return tuple(shape)


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
        object.__setattr__(self, "block_shape", check_block_shape_field(self.block_shape))
        check_positive("num_prototypes", self.num_prototypes)
        check_positive("prototype_rank", self.prototype_rank)
        check_positive("init_range", self.init_range, float)
        check_common(self)
