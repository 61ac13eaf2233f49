"""A bundle may narrow a bare per-channel parameter on its channel axis, and nothing else."""

from __future__ import annotations

import pytest

from spa.tasks.channel_slices import is_channel_slice


@pytest.mark.parametrize(
    ("stored", "base", "accepted"),
    [
        ((5,), (8,), True),  # ConvNeXt layer scale after channel pruning
        ((1, 5, 1, 1), (1, 8, 1, 1), True),
        ((8,), (8,), False),  # same shape: not a slice (checked elsewhere)
        ((9,), (8,), False),  # larger
        ((0,), (8,), False),  # empty
        ((5, 8), (8, 8), False),  # a matrix is not a per-channel vector
        ((1, 5), (8,), False),  # another rank
        ((2, 5, 1, 1), (1, 8, 1, 1), False),  # a singleton axis grew
    ],
)
def test_is_channel_slice(stored, base, accepted):
    assert is_channel_slice(stored, base) is accepted
