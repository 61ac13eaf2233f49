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
        num_prototypes: `R`, in [1, p q] (more cannot span more of a block's `p q` entries).
        prototype_rank: `r` of each prototype, in [1, min(p, q)] (a `p x q` prototype's rank).
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
        _check_prototype_sizes(self.block_shape, self.num_prototypes, self.prototype_rank)


def _check_prototype_sizes(block_shape: tuple[int, int], count: int, rank: int) -> None:
    """Refuse prototype sizes beyond what a `p x q` block can use (issue 24).

    A prototype `p_i q_i^T` has rank at most `min(p, q)`, and a block's update `sum_i b_i P_i`
    lies in the `p q`-dimensional space of `p x q` matrices: more prototypes, or a higher
    prototype rank, add parameters and memory, never capacity.
    """
    rows, cols = block_shape
    if rank > min(rows, cols):
        raise ConfigError(
            f"prototype_rank {rank} exceeds the width of a {rows} x {cols} block (rank at most "
            f"{min(rows, cols)}); lower prototype_rank or enlarge block_shape"
        )
    if count > rows * cols:
        raise ConfigError(
            f"num_prototypes {count} exceeds the {rows * cols} dimensions of a {rows} x {cols} "
            f"block (at most {rows * cols} prototypes can differ); lower num_prototypes or "
            "enlarge block_shape"
        )
