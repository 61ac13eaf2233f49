"""The per-layer rank bound (issue 24): an adapter's rank is at most its layer's width.

A low-rank adapter adds `down @ up` to an `n x m` matrix (`out x in/groups` for convolutions:
SPLoRA's factors are `down` (out x r) and `up` (r x in/groups), added at the kernel's centre
tap, so a grouped or depth-wise convolution's matrix is `out x in/groups`, 1 wide for a
depth-wise one). Such a product has rank at most `min(n, m)`, the layer's *width*: a larger
rank adds parameters and memory (`r (n + m)`), never capacity. `adapt` therefore gives each
layer `min(rank, width)`, with one warning naming the layers it capped, and refuses a rank
wider than every layer it adapts (a config that cannot mean what it says: `rank=100000` passed
2 GB, `rank=1000` on a 44K-parameter ResNet learned 541,666 parameters). A capped layer learns
`min(r, w) (n + m) <= 2 n m` values: at most twice what fine-tuning its matrix would.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from spa.errors import RankError, SpaWarning

# Capped layers named in the warning; the rest are counted.
_NAMED = 5


def matrix_width(module: nn.Module) -> int:
    """The width of the matrix a low-rank adapter acts on: `min(out, in/groups)`."""
    rows, columns = module.weight.shape[:2]  # (out, in/groups, *kernel)
    return int(min(rows, columns))


def capped_rank(module: nn.Module, rank: int) -> int:
    """`rank`, or the layer's width (`matrix_width`) where that is smaller."""
    return min(rank, matrix_width(module))


def _describe(name: str, module: nn.Module) -> str:
    rows, columns = module.weight.shape[:2]
    return f"{name!r} ({rows} x {columns}: rank at most {min(rows, columns)})"


def rank_caps(
    kind: Any, config: Any, candidates: list[tuple[str, nn.Module]]
) -> dict[str, tuple[int, int]]:
    """The layers whose asked rank exceeds their width, checked before anything is allocated.

    Args:
        kind: the `AdapterKind`; kinds without `layer_rank` have no rank to bound.
        config: the kind's config.
        candidates: `(dotted name, base module)` of the layers about to be adapted.

    Returns:
        Layer name -> (asked rank, width) for every layer that gets its width instead (none
        when the config's `cap_rank` is False).

    Raises:
        RankError: if every asked rank exceeds the widest layer, naming that layer.
    """
    if kind.layer_rank is None or not candidates:
        return {}
    asked = {name: kind.layer_rank(module, config) for name, module in candidates}
    widths = {name: matrix_width(module) for name, module in candidates}
    widest = max(widths, key=widths.get)
    if min(asked.values()) > widths[widest]:
        module = dict(candidates)[widest]
        raise RankError(
            f"adapt: rank {min(asked.values())} exceeds the width of every layer to adapt (the "
            f"widest is {_describe(widest, module)}, a rank's limit being min(out, in/groups) "
            "of its weight matrix); lower the rank"
        )
    if not getattr(config, "cap_rank", True):
        return {}  # the paper's counting: the asked rank everywhere (refused above if useless)
    return {name: (asked[name], widths[name]) for name in asked if asked[name] > widths[name]}


def warn_capped(caps: dict[str, tuple[int, int]], adapted: int) -> None:
    """One `SpaWarning` naming how many and which of `adapted` layers got their width as rank."""
    if not caps:
        return
    named = [f"{name} ({asked} -> {width})" for name, (asked, width) in list(caps.items())[:_NAMED]]
    more = f" and {len(caps) - _NAMED} more" if len(caps) > _NAMED else ""
    warnings.warn(
        f"adapt: rank capped to the layer's width (min(out, in/groups) of its weight matrix, "
        f"beyond which a low-rank update gains nothing) on {len(caps)} of {adapted} adapted "
        f"layer(s): {', '.join(named)}{more}",
        SpaWarning,
        stacklevel=3,
    )
