"""Class-per-folder image datasets (Oxford Flowers 102, Cats-and-Dogs, ...) with a split file.

Layout: `root/<class_name>/<image>.jpg|jpeg|png`. Class indices follow the sorted class folder
names. The split file (default `root/splits.csv`) assigns images to splits, one per line:

    relative_path,split
    daisy/0001.jpg,train
    daisy/0002.jpg,val
    tulip/0001.png,test

`relative_path` is `<class_name>/<file>` relative to `root` (forward slashes); `split` is
`train`, `val` or `test`. The header line is optional; blank lines and lines starting with `#`
are ignored; each path may appear once. Images not listed are not used. Images are decoded with
Pillow, converted to RGB and returned as float `(3, H, W)` tensors after the transform.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from spa.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CenterCrop,
    Compose,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    Transform,
)
from spa.errors import ConfigError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "decode_image",
    "image_folder_transform",
    "load_image_folder",
    "read_split_file",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_SPLITS = ("train", "val", "test")
_HEADER = "relative_path,split"


def decode_image(path: str | Path) -> Tensor:
    """Decode an image file into a float RGB tensor.

    Args:
        path: a JPEG or PNG file.

    Returns:
        A `(3, H, W)` float tensor with values in [0, 1].

    Raises:
        ConfigError: if the file is missing or Pillow cannot decode it; the message names it.
    """
    from PIL import Image  # imported lazily: only image-folder datasets need Pillow

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ConfigError(f"{path}: cannot decode image ({error})") from error
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0  # (3, H, W)


def read_split_file(split_file: str | Path, root: str | Path) -> list[tuple[str, str]]:
    """Parse and check a split file (format in the module docstring).

    Args:
        split_file: the CSV/TXT file.
        root: the dataset folder the relative paths point into.

    Returns:
        `(relative_path, split)` pairs in file order.

    Raises:
        ConfigError: if the file is missing, or a line is malformed, names an unknown split, a
            file outside a class folder, a non-image file, a missing file or a duplicate; the
            message names the file and line number.
    """
    split_file, root = Path(split_file), Path(root)
    if not split_file.is_file():
        raise ConfigError(f"{split_file}: split file not found (format: `{_HEADER}` lines)")
    entries: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    lines = split_file.read_text(encoding="utf-8").splitlines()
    for number, raw_line in enumerate(lines, start=1):
        line = raw_line.strip()
        where = f"{split_file}:{number}"
        if not line or line.startswith("#") or (line.replace(" ", "") == _HEADER and not entries):
            continue
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 2 or not all(fields):
            raise ConfigError(f"{where}: expected `relative_path,split`, got {raw_line!r}")
        relative_path, split = fields
        if split not in _SPLITS:
            raise ConfigError(f"{where}: split must be one of {_SPLITS}, got {split!r}")
        parts = Path(relative_path).parts
        if len(parts) != 2 or ".." in parts or Path(relative_path).is_absolute():
            raise ConfigError(f"{where}: path must be `<class_name>/<file>`, got {relative_path!r}")
        if Path(relative_path).suffix.lower() not in IMAGE_EXTENSIONS:
            raise ConfigError(
                f"{where}: {relative_path!r} is not a {'/'.join(IMAGE_EXTENSIONS)} file"
            )
        if not (root / relative_path).is_file():
            raise ConfigError(f"{where}: image {root / relative_path} not found")
        if relative_path in seen:
            raise ConfigError(
                f"{where}: {relative_path!r} is already listed on line {seen[relative_path]}"
            )
        seen[relative_path] = number
        entries.append((relative_path, split))
    return entries


def image_folder_transform(
    split: Literal["train", "val", "test"], image_size: int = 224
) -> Transform:
    """Return the standard preset for `split`.

    Train: random-resized-crop to `image_size`, horizontal flip, ImageNet normalisation.
    Val/test: resize the shorter side to `image_size / 0.875`, centre crop, normalisation.

    Args:
        split: "train" adds augmentation; "val" and "test" do not.
        image_size: side of the square output.

    Returns:
        A transform on float `(3, H, W)` images in [0, 1].
    """
    normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if split == "train":
        return Compose([RandomResizedCrop(image_size), RandomHorizontalFlip(), normalize])
    return Compose([Resize(round(image_size / 0.875)), CenterCrop(image_size), normalize])


class ImageFolderDataset(Dataset):
    """Images decoded on access from a list of files with class indices.

    Args:
        root: the dataset folder.
        samples: `(relative_path, class_index)` pairs.
        classes: class names; `classes[class_index]` is a folder under `root`.
        transform: applied to each decoded `(3, H, W)` float image in [0, 1].
    """

    def __init__(
        self,
        root: str | Path,
        samples: list[tuple[str, int]],
        classes: list[str],
        transform: Transform | None = None,
    ) -> None:
        self.root = Path(root)
        self.samples = samples
        self.classes = classes
        self.num_classes = len(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        relative_path, label = self.samples[index]
        image = decode_image(self.root / relative_path)
        if self.transform is not None:
            image = self.transform(image)
        return image, label


def load_image_folder(
    root: str | Path,
    split: Literal["train", "val", "test"],
    split_file: str | Path | None = None,
    transform: Transform | None = None,
    image_size: int = 224,
) -> ImageFolderDataset:
    """Load one split of a class-per-folder image dataset.

    Args:
        root: the dataset folder with one sub-folder per class.
        split: "train", "val" or "test".
        split_file: the split file; `None` means `root/splits.csv`.
        transform: per-item transform; `None` uses `image_folder_transform(split, image_size)`.
        image_size: output side of the default transform.

    Returns:
        The dataset of `(image tensor, int label)`, with `classes` and `num_classes` attributes.
        Class indices cover every class folder, even one with no image in this split.

    Raises:
        ConfigError: if `root` has no class folders, `split` is unknown, or the split file is
            invalid; the message names the folder, file and line.
    """
    if split not in _SPLITS:
        raise ConfigError(f"image_folder: split must be one of {_SPLITS}, got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: image folder not found")
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    if not classes:
        raise ConfigError(f"{root}: no class folders found (expected root/<class_name>/*.jpg)")
    class_index = {name: index for index, name in enumerate(classes)}
    entries = read_split_file(root / "splits.csv" if split_file is None else split_file, root)
    samples = [
        (relative_path, class_index[Path(relative_path).parts[0]])
        for relative_path, entry_split in entries
        if entry_split == split
    ]
    transform = image_folder_transform(split, image_size) if transform is None else transform
    return ImageFolderDataset(root, samples, classes, transform=transform)
