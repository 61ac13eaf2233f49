"""`BlockFinePruningConfig`: block masks on `nn.Linear` weights that train directly."""

from __future__ import annotations

from dataclasses import dataclass

from spa.adapters.config import ModuleSelection, check_common
from spa.adapters.splopa.config import check_block_shape_field


@dataclass(frozen=True, kw_only=True)
class BlockFinePruningConfig:
    """Block fine-pruning (the baseline of SPLoPA): `W_t = W * (M_b kron J)`, W trains.

    Args:
        block_shape: `(p, q)` rows and columns of a block; both > 0.
        target_modules: as in `SPLoRAConfig`.
        exclude_modules: as in `SPLoRAConfig`.
        trainable: as in `SPLoRAConfig`; by default every parameter trains (nothing frozen).
        head_modules: as in `SPLoRAConfig`.
    """

    block_shape: tuple[int, int] = (32, 32)
    target_modules: ModuleSelection = None
    exclude_modules: ModuleSelection = None
    trainable: tuple[str, ...] = ("all",)
    head_modules: ModuleSelection = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_shape", check_block_shape_field(self.block_shape))
        check_common(self)
