"""A bundle may narrow a bare per-channel parameter on its channel axis, or a described
per-head tensor on its head axis to its block's head count, and nothing else."""

from __future__ import annotations

import copy

import pytest
import torch

import spa
from spa.errors import BundleError
from spa.tasks.channel_slices import is_channel_slice
from tests._transformers import swin


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


@pytest.mark.parametrize(
    ("stored", "axis", "accepted"),
    [
        ((9, 3), 1, True),  # Swin's bias table keeping 3 of 4 heads
        ((9, 1), 1, True),
        ((4, 4), 1, False),  # narrowed on the relative positions, not the heads
        ((4, 4), 0, True),  # ... which a tensor declared with head axis 0 may be
        ((9, 3), 0, False),
        ((9, 3), 2, False),  # no such axis
        ((8, 3), 1, False),  # two axes changed
    ],
)
def test_is_channel_slice_on_a_declared_axis(stored, axis, accepted):
    assert is_channel_slice(stored, (9, 4), axis) is accepted


def _narrowed_table_bundle(tmp_path, table) -> tuple[torch.nn.Module, str]:
    """A Swin bundle whose first block's bias table is `table(original)`, its heads all kept."""
    base = swin().eval()
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2))
    bias = model.model.swin.encoder.layers[0].blocks[0].attention.relative_position_bias
    narrowed = table(bias.relative_position_bias_table.detach())
    bias.relative_position_bias_table = torch.nn.Parameter(narrowed)
    path = tmp_path / "task.safetensors"
    spa.save_task(spa.compacted(model), path, base_model=base)
    return base, path


def test_bundle_whose_bias_table_keeps_fewer_heads_than_its_block_is_refused(tmp_path):
    # A one-head table would broadcast silently over the block's two query heads.
    base, path = _narrowed_table_bundle(tmp_path, lambda table: table[:, :1])
    with pytest.raises(BundleError, match=r"would keep 1 heads on axis 1, but .*q_proj keeps 2"):
        spa.load_task(base, path)


def test_bundle_whose_bias_table_lost_relative_positions_is_refused(tmp_path):
    base, path = _narrowed_table_bundle(tmp_path, lambda table: table[:4])
    with pytest.raises(BundleError, match=r"relative_position_bias_table would be \(4, 2\)"):
        spa.load_task(base, path)
