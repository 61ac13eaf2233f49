"""`SPLoRAConfig`: channel-pruning low-rank adapters (Eq. 4)."""

from __future__ import annotations

from dataclasses import dataclass

from spa.adapters.config import ModuleSelection, check_common, check_positive
from spa.errors import ConfigError


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
        head_modules: the task head (regex or suffixes); None means the last `nn.Linear`, an
            empty list a model without a head (a bare encoder: every layer is adapted).
        cap_rank: give each layer at most its width, `min(out, in/groups)` of the matrix the
            adapter updates (a larger rank adds parameters, never capacity); False keeps the
            asked rank on every layer, as the paper counts (ResNet-50 at r=8: 466,338 learned
            parameters, with rank 8 on the 64 x 3 stem). A rank wider than every layer is
            refused either way.
    """

    rank: int = 8
    rank_fraction: float | None = None
    init_range: float = 1e-4
    target_modules: ModuleSelection = None
    exclude_modules: ModuleSelection = None
    trainable: tuple[str, ...] = ("norm", "head")
    head_modules: ModuleSelection = None
    cap_rank: bool = True

    def __post_init__(self) -> None:
        check_positive("rank", self.rank)
        if self.rank_fraction is not None and not 0 < self.rank_fraction <= 1:
            raise ConfigError(f"rank_fraction must be in (0, 1], got {self.rank_fraction!r}")
        check_positive("init_range", self.init_range, float)
        check_common(self)
