"""Transfer-learning tasks on scikit-learn's bundled 8x8 digits (no download needed).

The 1,797 images of `sklearn.datasets.load_digits` are split once, stratified by digit and
seeded, into two disjoint halves ("pools"). Each half is split again, stratified by digit, into
train and test. A task is a labelling of one pool:

| task     | pool   | classes | label                         |
|----------|--------|---------|-------------------------------|
| `source` | source | 10      | the digit 0-9                 |
| `parity` | target | 2       | 0 = even digit, 1 = odd digit |
| `mod3`   | target | 3       | digit mod 3                   |
| `ge5`    | target | 2       | 1 if digit >= 5 else 0        |

A model is pre-trained on `source` and adapted to each target task, which shares the images of
the target pool but labels them differently. For a given seed, the train and test images of
every target task are the same. Pixels (0-16) are scaled to [0, 1], upsampled to `size` x
`size` with bilinear interpolation, and normalised with the mean and std of all 1,797 images at
that size (label-free statistics, identical for every task and split).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from spa.data.transforms import TensorImageDataset, Transform
from spa.errors import ConfigError

__all__ = ["DIGITS_TASKS", "DigitsTask", "digits_task", "split_digits"]


@dataclass(frozen=True, kw_only=True)
class DigitsTask:
    """One labelling of one pool of digit images.

    Args:
        name: the task name used by `digits_task`.
        pool: which half of the images the task uses.
        num_classes: number of classes of the labelling.
        relabel: maps an array of digits 0-9 to the task's labels.
    """

    name: str
    pool: Literal["source", "target"]
    num_classes: int
    relabel: Callable[[np.ndarray], np.ndarray]


DIGITS_TASKS: Mapping[str, DigitsTask] = MappingProxyType(
    {
        "source": DigitsTask(name="source", pool="source", num_classes=10, relabel=lambda d: d),
        "parity": DigitsTask(name="parity", pool="target", num_classes=2, relabel=lambda d: d % 2),
        "mod3": DigitsTask(name="mod3", pool="target", num_classes=3, relabel=lambda d: d % 3),
        "ge5": DigitsTask(
            name="ge5", pool="target", num_classes=2, relabel=lambda d: (d >= 5).astype(np.int64)
        ),
    }
)


def _stratified_halves(
    digits: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (first, second), putting `fraction` of each digit in `second`."""
    first, second = [], []
    for digit in np.unique(digits):
        indices = rng.permutation(np.flatnonzero(digits == digit))
        cut = len(indices) - int(round(len(indices) * fraction))
        first.append(indices[:cut])
        second.append(indices[cut:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def split_digits(
    digits: np.ndarray, seed: int = 0, test_fraction: float = 0.25
) -> dict[tuple[str, str], np.ndarray]:
    """Return the image indices of every (pool, split) pair, stratified by digit.

    Args:
        digits: the digit label of every image.
        seed: seed of the split; the same seed always gives the same indices.
        test_fraction: fraction of each pool (per digit) that goes to the test split.

    Returns:
        A dict keyed by `("source" | "target", "train" | "test")` of sorted index arrays that
        together cover every image exactly once.
    """
    rng = np.random.default_rng(seed)
    pools = dict(zip(("source", "target"), _stratified_halves(digits, 0.5, rng)))
    indices: dict[tuple[str, str], np.ndarray] = {}
    for pool, pool_indices in pools.items():
        train, test = _stratified_halves(digits[pool_indices], test_fraction, rng)
        indices[(pool, "train")] = pool_indices[train]
        indices[(pool, "test")] = pool_indices[test]
    return indices


def digits_task(
    name: str,
    split: Literal["train", "test"],
    seed: int = 0,
    size: int = 32,
    channels: Literal[1, 3] = 1,
    test_fraction: float = 0.25,
    transform: Transform | None = None,
) -> TensorImageDataset:
    """Load one digits task (see the module docstring for the task definitions).

    Args:
        name: one of `DIGITS_TASKS`: "source", "parity", "mod3", "ge5".
        split: "train" or "test".
        seed: seed of the pool and train/test split.
        size: height and width the 8x8 images are upsampled to.
        channels: 1 for greyscale, 3 to repeat the channel (for RGB models).
        test_fraction: fraction of each pool held out for testing.
        transform: optional per-item transform applied after normalisation.

    Returns:
        A dataset of `(image (channels, size, size) float tensor, int label)`, with a
        `num_classes` attribute.

    Raises:
        ConfigError: if an argument is out of range; the message names it.
    """
    if name not in DIGITS_TASKS:
        raise ConfigError(f"unknown digits task {name!r}; known: {', '.join(DIGITS_TASKS)}")
    if split not in ("train", "test"):
        raise ConfigError(f"digits: split must be 'train' or 'test', got {split!r}")
    if channels not in (1, 3):
        raise ConfigError(f"digits: channels must be 1 or 3, got {channels}")
    if size < 1:
        raise ConfigError(f"digits: size must be a positive integer, got {size}")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"digits: test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits  # imported lazily: only this loader needs sklearn

    bunch = load_digits()
    digits = np.asarray(bunch.target, dtype=np.int64)
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = (images - images.mean()) / images.std()
    task = DIGITS_TASKS[name]
    indices = split_digits(digits, seed=seed, test_fraction=test_fraction)[(task.pool, split)]
    selected = images[torch.as_tensor(indices)]
    if channels == 3:
        selected = selected.repeat(1, 3, 1, 1)  # (N, 3, size, size)
    labels = torch.as_tensor(task.relabel(digits[indices]), dtype=torch.int64)
    return TensorImageDataset(selected, labels, transform=transform, num_classes=task.num_classes)
