"""How a bare parameter is used in Torch-Pruning's traced graph (no Torch-Pruning import here:
the graph object is passed in by `spa.pruning.groups`)."""

from __future__ import annotations

from torch import nn

# Autograd ops that only reshape a tensor: a parameter may pass through them on its way to the
# multiplication that makes it a per-channel scale.
_SHAPE_OPS = ("View", "Unsqueeze", "Reshape", "Expand", "Squeeze", "UnsafeView")


def parameter_problem(graph, parameter: nn.Parameter) -> str | None:
    """Why a bare parameter on a pruned axis cannot be sliced with its group, or None.

    spa slices a bare parameter when it is a per-channel scale: one axis longer than one, and
    every use (through reshapes) is an elementwise multiplication. Then a removed channel is
    zero in the masked model (it multiplies a masked producer's zero output) and slicing the
    parameter keeps every kept channel's value, so masked == compacted.
    """
    if sum(size > 1 for size in parameter.shape) != 1:
        return f"a tensor of shape {tuple(parameter.shape)}, not a per-channel vector"
    node = graph.module2node.get(parameter)
    pending, uses = list(node.outputs) if node is not None else [], []
    while pending:
        consumer = pending.pop()
        op = type(consumer.grad_fn).__name__ if consumer.grad_fn is not None else "unknown"
        if op.startswith(_SHAPE_OPS):
            pending.extend(consumer.outputs)
        else:
            uses.append(op)
    if not uses or any(not op.startswith("MulBackward") for op in uses):
        used = ", ".join(sorted(set(uses))) or "nothing spa can trace"
        return (
            f"a per-channel tensor used by {used}; spa slices only per-channel scales "
            "(elementwise multiplication)"
        )
    return None


def reshaped(graph, parameter: nn.Parameter) -> bool:
    """True if the parameter is reshaped before use (broadcast over a channel-first axis)."""
    node = graph.module2node.get(parameter)
    uses = [] if node is None else node.outputs
    return any(
        consumer.grad_fn is not None and type(consumer.grad_fn).__name__.startswith(_SHAPE_OPS)
        for consumer in uses
    )
