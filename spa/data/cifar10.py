"""CIFAR-10 from the official python batch files, read with a restricted unpickler.

The official archive unpacks to a `cifar-10-batches-py` folder holding `data_batch_1` ...
`data_batch_5` (train, 10,000 images each) and `test_batch`. Each is a pickled dict with
`data`, a uint8 array `(N, 3072)` (the red, green and blue 32x32 planes), and `labels`, a list of
ints in 0-9. Pickles can run arbitrary code when loaded, so `read_cifar_batch` resolves only the
numpy names that such an array needs and refuses every other global.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from spa.data.transforms import (
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    TensorImageDataset,
    Transform,
)
from spa.errors import ConfigError

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "cifar10_transform",
    "load_cifar10",
    "read_cifar_batch",
]

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

_TRAIN_FILES = tuple(f"data_batch_{index}" for index in range(1, 6))
_TEST_FILES = ("test_batch",)
_FOLDER = "cifar-10-batches-py"


def _allowed_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    # Files pickled under numpy 1.x name `numpy.core`, under numpy 2 `numpy._core`; both map to
    # the installed objects without importing the deprecated `numpy.core` shim.
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the numpy globals needed to rebuild an array."""

    def __init__(self, file: io.BufferedIOBase, source: Path) -> None:
        super().__init__(file, encoding="latin1")  # latin1: the official files are Python 2 pickles
        self.source = source
        self.allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise ConfigError(
                f"{self.source}: refusing to load global {module}.{name}; a CIFAR-10 batch may "
                "only contain dicts, lists, ints, bytes and numpy arrays"
            ) from None


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 batch file safely.

    Args:
        path: a file such as `cifar-10-batches-py/data_batch_1`.

    Returns:
        Images as uint8 `(N, 3, 32, 32)` and labels as int64 `(N,)`.

    Raises:
        ConfigError: if the file is missing, references a global other than the numpy array
            constructors, or does not hold the expected `data`/`labels` entries; the message
            names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: CIFAR-10 batch file not found")
    with path.open("rb") as file:
        try:
            content = _RestrictedUnpickler(file, path).load()
        except ConfigError:
            raise
        except Exception as error:  # re-raised with the file named; the cause is chained
            raise ConfigError(f"{path}: not a readable CIFAR-10 batch ({error})") from error
    if not isinstance(content, Mapping):
        raise ConfigError(f"{path}: expected a pickled dict, got {type(content).__name__}")
    entries = {
        key.decode("latin1") if isinstance(key, bytes) else key: value
        for key, value in content.items()
    }
    if "data" not in entries or "labels" not in entries:
        raise ConfigError(f"{path}: expected 'data' and 'labels' entries, got {sorted(entries)}")
    data, labels = entries["data"], np.asarray(entries["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise ConfigError(f"{path}: 'data' must be a uint8 array (N, 3072)")
    if data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise ConfigError(
            f"{path}: 'data' has shape {data.shape} and 'labels' {labels.shape}; "
            "expected (N, 3072) and (N,)"
        )
    if labels.size and (labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() > 9):
        raise ConfigError(f"{path}: 'labels' must be integers in 0-9")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def cifar10_transform(split: Literal["train", "test"]) -> Transform:
    """Return the standard preset: pad-4 random crop and flip for train, then normalise.

    Args:
        split: "train" adds augmentation; "test" only normalises.

    Returns:
        A transform on float `(3, 32, 32)` images in [0, 1].
    """
    normalize = Normalize(CIFAR10_MEAN, CIFAR10_STD)
    if split == "train":
        return Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(), normalize])
    return normalize


def load_cifar10(
    root: str | Path,
    split: Literal["train", "test"],
    transform: Transform | None = None,
) -> TensorImageDataset:
    """Load CIFAR-10 from the official python batch files.

    Args:
        root: the folder that contains `cifar-10-batches-py`, or that folder itself.
        split: "train" (the five data batches) or "test" (`test_batch`).
        transform: per-item transform of float `(3, 32, 32)` images in [0, 1]; `None` uses
            `cifar10_transform(split)`. Pass `Compose([])` for unnormalised images.

    Returns:
        A dataset of `(image (3, 32, 32) float tensor, int label)` with `num_classes = 10`.

    Raises:
        ConfigError: if `split` is not "train"/"test", or a batch file is missing or invalid;
            the message names the file.
    """
    if split not in ("train", "test"):
        raise ConfigError(f"cifar10: split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    folder = root / _FOLDER if (root / _FOLDER).is_dir() else root
    names = _TRAIN_FILES if split == "train" else _TEST_FILES
    batches = [read_cifar_batch(folder / name) for name in names]
    images = torch.from_numpy(np.concatenate([images for images, _ in batches]))
    labels = torch.from_numpy(np.concatenate([labels for _, labels in batches]))
    transform = cifar10_transform(split) if transform is None else transform
    return TensorImageDataset(images, labels, transform=transform, num_classes=10)
