"""Channel-pruning configuration: criterion, ranking, floors and the iterative schedule."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from spa.errors import ConfigError
from spa.pruning.schedules import IterativeSchedule


def round_to_problem(round_to: object) -> str | None:
    """Why `round_to` is not an integer >= 1, None, or a mapping of transformer units to such
    integers (None if it is one of those)."""
    from spa.pruning.units import UNITS

    steps = round_to if isinstance(round_to, Mapping) else {"": round_to}
    for unit, step in steps.items():
        if (unit and unit not in UNITS) or not (
            step is None or (isinstance(step, int) and not isinstance(step, bool) and step >= 1)
        ):
            return (
                f"must be an integer >= 1, None, or a mapping of units {UNITS} to integers "
                f">= 1; got {round_to!r}"
            )
    return None


@dataclass(frozen=True, kw_only=True)
class ChannelPruningConfig:
    """How channels are scored, ranked and removed.

    Args:
        criterion: a name in `spa.pruning.CRITERIA` (the registered channel criteria).
        ranking: "global" (all groups compete on per-layer-normalised scores) or "local" (the
            same fraction of every group: for transformer units, the same number of heads and
            of FFN neurons in every layer, as `spa.save_pretrained` needs).
        min_channels: never keep fewer channels than this in a group (>= 1).
        min_fraction: never keep fewer than this fraction of a group's channels, in [0, 1].
        round_to: keep channel counts multiples of this (e.g. 8); None for no rounding; a
            mapping rounds only the transformer units it names (e.g. `{"hidden": 4}`).
        num_batches: batches the data-based criteria accumulate over (None = all).
        norm_p: the `p` of the Weight criterion's L_p norm.
        lrp_rule: "epsilon" or "zplus".
        lrp_epsilon: the LRP stabiliser.
        schedule: the iterative schedule.
        units: for transformers of a described family, the units to prune ("heads", "ffn",
            "hidden"); None prunes heads and FFN neurons (see `spa.pruning.units`).
        target: what the scheduled densities measure: "params" (fraction of the prunable base
            weights kept, the paper's density) or "flops" (fraction of the whole model's
            MACs/FLOPs kept, measured on the example inputs).
        cost: what a channel's score is divided by before ranking (`spa.pruning.cost`):
            "none" (plain ranking, the paper's), "params" (score per retained weight its
            removal saves) or "macs" (score per multiply-accumulate it saves, measured on the
            example inputs), so a target removes compute first.
    """

    criterion: str = "weight"
    ranking: Literal["global", "local"] = "global"
    min_channels: int = 1
    min_fraction: float = 0.0
    round_to: int | Mapping[str, int] | None = None
    num_batches: int | None = 1
    norm_p: float = 2.0
    lrp_rule: Literal["epsilon", "zplus"] = "epsilon"
    lrp_epsilon: float = 1e-6
    schedule: IterativeSchedule = IterativeSchedule()
    units: tuple[str, ...] | None = None
    target: Literal["params", "flops"] = "params"
    cost: Literal["none", "params", "macs"] = "none"

    @property
    def needs_macs_profile(self) -> bool:
        """Whether pruning needs a `MacsProfile`: a FLOPs target or MACs-normalised ranking."""
        return self.target == "flops" or self.cost == "macs"

    def __post_init__(self) -> None:
        from spa.pruning.criteria import CRITERIA  # the registry validates the name

        CRITERIA.get(self.criterion)
        if self.ranking not in ("global", "local"):
            raise ConfigError(f"ranking must be 'global' or 'local', got {self.ranking!r}")
        if not isinstance(self.min_channels, int) or self.min_channels < 1:
            raise ConfigError(f"min_channels must be an integer >= 1, got {self.min_channels!r}")
        if not 0.0 <= self.min_fraction <= 1.0:
            raise ConfigError(f"min_fraction must be in [0, 1], got {self.min_fraction!r}")
        if problem := round_to_problem(self.round_to):
            raise ConfigError(f"round_to {problem}")
        if self.num_batches is not None and self.num_batches < 1:
            raise ConfigError(f"num_batches must be >= 1 or None, got {self.num_batches!r}")
        if not self.norm_p > 0:
            raise ConfigError(f"norm_p must be > 0, got {self.norm_p!r}")
        if self.lrp_rule not in ("epsilon", "zplus"):
            raise ConfigError(f"lrp_rule must be 'epsilon' or 'zplus', got {self.lrp_rule!r}")
        if self.target not in ("params", "flops"):
            raise ConfigError(f"target must be 'params' or 'flops', got {self.target!r}")
        if self.cost not in ("none", "params", "macs"):
            raise ConfigError(f"cost must be 'none', 'params' or 'macs', got {self.cost!r}")
        if self.lrp_epsilon < 0:
            raise ConfigError(f"lrp_epsilon must be >= 0, got {self.lrp_epsilon!r}")

        from spa.pruning.units import UNITS

        if self.units is not None and (
            not isinstance(self.units, tuple) or not self.units or set(self.units) - set(UNITS)
        ):
            raise ConfigError(f"units must be None or a tuple from {UNITS}, got {self.units!r}")
