"""Will a compacted task model run? Shape rules checked without running it (issue 21, item 5).

`save_task` cannot run the compacted model it writes, and a bundle whose
attention projections keep part of a head loads fine and then fails in the model's own head
reshape (`view(..., heads, head_dim)`). This module checks the compacted structure against the
head geometry the model and its config declare (`spa.pruning.traced_heads.attention_scopes`:
head counts and `head_dim`): within one attention module, every projection whose original rows
were per head (`heads x head_dim` or `kv_heads x head_dim` rows) must keep whole heads — at most
one of them (the output projection, whose rows are the hidden size) may keep other rows.
"""

from __future__ import annotations

from torch import nn

from spa.adapters.protocols import ChannelMasked
from spa.errors import ConfigError


def _whole_heads(indices: list[int], head_dim: int) -> bool:
    kept = set(indices)
    heads = {index // head_dim for index in kept}
    return len(kept) == len(heads) * head_dim


def _problem(path: str, module: nn.Module, scope) -> str | None:
    per_head = (scope.heads * scope.head_dim, scope.kv_heads * scope.head_dim)
    cut = [
        name
        for name, child in module.named_children()
        if isinstance(child, ChannelMasked) and child.base_shape[0] in per_head
        if not _whole_heads(child.out_indices.tolist(), scope.head_dim)
    ]
    if len(cut) < 2:
        return None
    return (
        f"{path}: projections {', '.join(cut)} keep rows that are not whole heads of head_dim "
        f"{scope.head_dim}, so the model's head reshape would fail"
    )


def check_runnable(model: nn.Module) -> None:
    """Refuse a compacted model whose attention projections keep parts of heads.

    Args:
        model: the compacted task model about to be written.

    Raises:
        ConfigError: naming the attention module and projections, in one line.
    """
    from spa.pruning.traced_heads import attention_scopes  # pruning imports torch_pruning

    modules = dict(model.named_modules())
    for path, scope in attention_scopes(model).items():
        if scope.head_dim is None:
            continue
        problem = _problem(path, modules[path], scope)
        if problem is not None:
            raise ConfigError(
                f"save_task: {problem}; the bundle would load and then fail. Prune with "
                "spa.pruning.channel_groups (whole heads)"
            )
