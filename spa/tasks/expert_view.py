"""A base model with 3-D experts, seen as split (`spa.families.experts`) without changing it."""

from __future__ import annotations

from torch import nn

from spa.codec.records import structural_copy
from spa.families.experts import split_experts, unsplit_experts


def split_view(model: nn.Module) -> nn.Module:
    """`model` itself, or, where it holds 3-D experts, a structural copy with them split.

    The copy shares every tensor with `model` (the per-expert weights are views of its 3-D
    parameters) and `model` is not changed, so bundles name the per-expert layers `spa.adapt`
    made and a base has one fingerprint whether its experts were split or not.

    Args:
        model: a plain base model.
    """
    if not unsplit_experts(model):
        return model
    view = structural_copy(model)
    split_experts(view)
    return view
