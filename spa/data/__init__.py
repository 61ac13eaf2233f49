"""Dataset registry and loaders returning `(float (C, H, W) image, int label)` datasets.

Registered names (keyword arguments after `name`, `root` and `split` go to the loader):

- `digits`: scikit-learn's bundled digits as transfer tasks (`task=`, see `spa.data.digits`);
  `root` is ignored. Splits: train, test.
- `cifar10`: the official python batch files under `root` (see `spa.data.cifar10`).
  Splits: train, test.
- `image_folder`: `root/<class_name>/*.jpg|png` plus a split file (see `spa.data.image_folder`).
  Splits: train, val, test.

SQuAD reading and evaluation live in `spa.data.squad`; they are not image datasets.

Example:
    >>> from spa.data import load_dataset
    >>> train = load_dataset("digits", None, "train", task="parity")
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal, get_args

from torch.utils.data import Dataset

from spa._registry import Registry
from spa.data.cifar10 import load_cifar10
from spa.data.digits import DIGITS_TASKS, digits_task
from spa.data.image_folder import load_image_folder
from spa.data.transforms import TensorImageDataset, Transform
from spa.errors import ConfigError

__all__ = [
    "DATASETS",
    "DIGITS_TASKS",
    "Split",
    "TensorImageDataset",
    "digits_task",
    "load_cifar10",
    "load_dataset",
    "load_image_folder",
]

Split = Literal["train", "val", "test"]

DATASETS: Registry = Registry("dataset")


@DATASETS.register("digits")
def _load_digits(
    root: str | Path | None,
    split: Split,
    task: str = "source",
    seed: int = 0,
    size: int = 32,
    channels: Literal[1, 3] = 1,
    test_fraction: float = 0.25,
    transform: Transform | None = None,
) -> Dataset:
    return digits_task(task, split, seed, size, channels, test_fraction, transform)


@DATASETS.register("cifar10")
def _load_cifar10(
    root: str | Path | None, split: Split, transform: Transform | None = None
) -> Dataset:
    if root is None:
        raise ConfigError("cifar10: root is required (the folder holding cifar-10-batches-py)")
    return load_cifar10(root, split, transform)


@DATASETS.register("image_folder")
def _load_image_folder(
    root: str | Path | None,
    split: Split,
    split_file: str | Path | None = None,
    transform: Transform | None = None,
    image_size: int = 224,
) -> Dataset:
    if root is None:
        raise ConfigError("image_folder: root is required (the folder of class folders)")
    return load_image_folder(root, split, split_file, transform, image_size)


def load_dataset(name: str, root: str | Path | None, split: Split, **kwargs: Any) -> Dataset:
    """Load split `split` of the dataset registered under `name`.

    Args:
        name: a registered dataset name (see `DATASETS.names()`).
        root: the folder holding the files; `None` for datasets bundled with a library.
        split: "train", "val" or "test" (not every dataset has every split).
        **kwargs: loader options, e.g. `task="parity"` for digits or `transform=`.

    Returns:
        A dataset of `(image float (C, H, W) tensor, int label)` items with a `num_classes`
        attribute.

    Raises:
        ConfigError: if `name` or `split` is unknown, an option does not fit the loader, or
            the files are missing or invalid; the message names the value or file at fault.
    """
    if split not in get_args(Split):
        raise ConfigError(f"split must be one of {get_args(Split)}, got {split!r}")
    loader = DATASETS.get(name)
    try:
        inspect.signature(loader).bind(root, split, **kwargs)
    except TypeError as error:
        raise ConfigError(f"dataset {name!r}: invalid options {sorted(kwargs)} ({error})") from None
    return loader(root, split, **kwargs)
