"""Mask buffers and a version-keyed cache for tensors derived from parameters and masks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook


def ones_mask(size: int, device: torch.device | None = None) -> torch.Tensor:
    """An all-true boolean mask of length `size` (nothing pruned)."""
    return torch.ones(size, dtype=torch.bool, device=device)


def outer_mask(out_mask: torch.Tensor, in_mask: torch.Tensor, weight_dim: int) -> torch.Tensor:
    """`m_row m_col^T` shaped to broadcast over a `(out, in, *kernel)` weight."""
    mask = out_mask[:, None] & in_mask[None, :]  # (out, in)
    return mask.reshape(mask.shape + (1,) * (weight_dim - 2))


def expand_block_mask(block_mask: torch.Tensor, block_shape: tuple[int, int]) -> torch.Tensor:
    """`M_b kron J`: a `(n/p, m/q)` block tensor expanded to the `(n, m)` weight grid.

    Args:
        block_mask: one value per block (bool mask or float gate).
        block_shape: `(p, q)`.

    Returns:
        The element-wise tensor.
    """
    rows, cols = block_shape
    return block_mask.repeat_interleave(rows, 0).repeat_interleave(cols, 1)


# Optimizer steps taken in this process, by any `torch.optim.Optimizer`. Some optimizers (fused
# AdamW) update parameters in place without moving their version counters, so a cache derived
# from trainable tensors also keys on this count.
_optimizer_steps = 0


def _count_step(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_step)


class DerivedTensorCache:
    """Caches a tensor computed from other tensors until one of them changes.

    A source counts as changed when it is a different object, lives at a different address
    (e.g. after `.to(device)`) or was modified in place (its version counter moved, as after
    `copy_` or `load_state_dict`). Holding the sources keeps their identities unique. While a
    source requires a gradient, any optimizer step also counts as a change: some optimizers
    (fused AdamW) update parameters in place without moving their version counters.
    """

    def __init__(self) -> None:
        self._sources: tuple[torch.Tensor, ...] = ()
        self._keys: tuple[tuple[int, int], ...] = ()
        self._value: torch.Tensor | None = None

    def get(
        self, sources: Sequence[torch.Tensor], compute: Callable[[], torch.Tensor]
    ) -> torch.Tensor:
        """Return the cached value, recomputing it (without autograd) if any source changed."""
        keys = tuple((t.data_ptr(), t._version) for t in sources)
        if any(t.requires_grad for t in sources):
            keys += ((_optimizer_steps, 0),)
        same = (
            self._value is not None
            and len(sources) == len(self._sources)
            and all(a is b for a, b in zip(sources, self._sources))
            and keys == self._keys
        )
        if not same:
            with torch.no_grad():
                self._value = compute()
            self._sources, self._keys = tuple(sources), keys
        return self._value

    def clear(self) -> None:
        """Forget the cached value."""
        self._sources, self._keys, self._value = (), (), None

    def __deepcopy__(self, memo: dict) -> DerivedTensorCache:
        return DerivedTensorCache()  # a copy recomputes from its own tensors
