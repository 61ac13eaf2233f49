"""Torch-only image transforms on float `(C, H, W)` tensors, and an in-memory image dataset.

Each transform is a small callable `Tensor -> Tensor`; `Compose` chains them. Random
transforms draw from an optional `torch.Generator` so pipelines can be made reproducible without
touching the global seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from spa.errors import ConfigError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CenterCrop",
    "Compose",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "Resize",
    "TensorImageDataset",
    "Transform",
]

Transform = Callable[[Tensor], Tensor]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or min(pair) < 1:
        raise ConfigError(f"{name}: size must be a positive int or (height, width), got {size}")
    return int(pair[0]), int(pair[1])


def _resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    # Antialiased bilinear, like torchvision's tensor Resize default.
    resized = F.interpolate(
        image.unsqueeze(0), size=size, mode="bilinear", align_corners=False, antialias=True
    )
    return resized.squeeze(0)


class Compose:
    """Apply transforms in order.

    Args:
        transforms: the callables to chain; an empty list is the identity.
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Tensor) -> Tensor:
        """Return `image` passed through every transform in order."""
        for transform in self.transforms:
            image = transform(image)
        return image


class Normalize:
    """Subtract a per-channel mean and divide by a per-channel std.

    Args:
        mean: one value per channel.
        std: one positive value per channel.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std) or min(std) <= 0:
            raise ConfigError(f"Normalize: need equal-length mean/std with std > 0, got {std}")
        self.mean = torch.tensor(mean).view(-1, 1, 1)  # (C, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, image: Tensor) -> Tensor:
        """Return `(image - mean) / std`."""
        return (image - self.mean) / self.std


class Resize:
    """Resize with antialiased bilinear interpolation.

    Args:
        size: an int resizes the shorter side to `size`, keeping the aspect ratio;
            `(height, width)` resizes to exactly that.
    """

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = size if isinstance(size, int) else _pair(size, "Resize")
        if isinstance(self.size, int) and self.size < 1:
            raise ConfigError(f"Resize: size must be positive, got {size}")

    def __call__(self, image: Tensor) -> Tensor:
        """Return the resized image."""
        if isinstance(self.size, tuple):
            return _resize(image, self.size)
        height, width = image.shape[-2:]
        scale = self.size / min(height, width)
        return _resize(image, (max(1, round(height * scale)), max(1, round(width * scale))))


class CenterCrop:
    """Crop the centre; an image smaller than the crop is zero-padded first.

    Args:
        size: an int for a square crop, or `(height, width)`.
    """

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _pair(size, "CenterCrop")

    def __call__(self, image: Tensor) -> Tensor:
        """Return the central crop."""
        crop_height, crop_width = self.size
        height, width = image.shape[-2:]
        pad_height, pad_width = max(crop_height - height, 0), max(crop_width - width, 0)
        if pad_height or pad_width:
            left, top = pad_width // 2, pad_height // 2
            image = F.pad(image, (left, pad_width - left, top, pad_height - top))
            height, width = image.shape[-2:]
        top = int(round((height - crop_height) / 2.0))
        left = int(round((width - crop_width) / 2.0))
        return image[..., top : top + crop_height, left : left + crop_width]


class RandomCrop:
    """Zero-pad each side by `padding`, then crop `size` at a random position (CIFAR style).

    Args:
        size: an int for a square crop, or `(height, width)`.
        padding: pixels of zero padding added on every side first.
        generator: source of randomness; `None` uses torch's default generator.
    """

    def __init__(
        self, size: int | Sequence[int], padding: int = 0, generator: torch.Generator | None = None
    ) -> None:
        self.size = _pair(size, "RandomCrop")
        if padding < 0:
            raise ConfigError(f"RandomCrop: padding must be >= 0, got {padding}")
        self.padding = padding
        self.generator = generator

    def __call__(self, image: Tensor) -> Tensor:
        """Return a random crop of the padded image."""
        if self.padding:
            image = F.pad(image, (self.padding,) * 4)
        crop_height, crop_width = self.size
        height, width = image.shape[-2:]
        if height < crop_height or width < crop_width:
            raise ConfigError(
                f"RandomCrop: crop {self.size} is larger than the padded image {(height, width)}"
            )
        top = int(torch.randint(height - crop_height + 1, (1,), generator=self.generator))
        left = int(torch.randint(width - crop_width + 1, (1,), generator=self.generator))
        return image[..., top : top + crop_height, left : left + crop_width]


class RandomHorizontalFlip:
    """Mirror the image left-right with probability `probability`.

    Args:
        probability: chance of flipping, in [0, 1].
        generator: source of randomness; `None` uses torch's default generator.
    """

    def __init__(self, probability: float = 0.5, generator: torch.Generator | None = None) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ConfigError(
                f"RandomHorizontalFlip: probability must be in [0, 1], got {probability}"
            )
        self.probability = probability
        self.generator = generator

    def __call__(self, image: Tensor) -> Tensor:
        """Return the image, flipped along its last axis with the given probability."""
        if float(torch.rand((), generator=self.generator)) < self.probability:
            return image.flip(-1)
        return image


class RandomResizedCrop:
    """Crop a random area and aspect ratio, then resize to `size` (torchvision's algorithm).

    Args:
        size: an int for a square output, or `(height, width)`.
        scale: range of the crop's area as a fraction of the image's area.
        ratio: range of the crop's aspect ratio (width / height), sampled log-uniformly.
        generator: source of randomness; `None` uses torch's default generator.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        generator: torch.Generator | None = None,
    ) -> None:
        self.size = _pair(size, "RandomResizedCrop")
        if not (0 < scale[0] <= scale[1] <= 1) or not (0 < ratio[0] <= ratio[1]):
            raise ConfigError(
                f"RandomResizedCrop: need 0 < scale[0] <= scale[1] <= 1 and "
                f"0 < ratio[0] <= ratio[1], got scale={scale}, ratio={ratio}"
            )
        self.scale = scale
        self.ratio = ratio
        self.generator = generator

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=self.generator))

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """Sample `(top, left, crop_height, crop_width)` for an image of the given size."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * self._uniform(*self.scale)
            aspect = math.exp(self._uniform(*log_ratio))
            crop_width = round(math.sqrt(target_area * aspect))
            crop_height = round(math.sqrt(target_area / aspect))
            if 0 < crop_width <= width and 0 < crop_height <= height:
                top = int(torch.randint(height - crop_height + 1, (1,), generator=self.generator))
                left = int(torch.randint(width - crop_width + 1, (1,), generator=self.generator))
                return top, left, crop_height, crop_width
        # Fallback: the largest central crop whose aspect ratio is within range.
        aspect = width / height
        if aspect < self.ratio[0]:
            crop_width, crop_height = width, round(width / self.ratio[0])
        elif aspect > self.ratio[1]:
            crop_height, crop_width = height, round(height * self.ratio[1])
        else:
            crop_height, crop_width = height, width
        return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width

    def __call__(self, image: Tensor) -> Tensor:
        """Return a random crop resized to `size`."""
        top, left, crop_height, crop_width = self.crop_box(*image.shape[-2:])
        crop = image[..., top : top + crop_height, left : left + crop_width]
        return _resize(crop, self.size)


class TensorImageDataset(Dataset):
    """Images and labels held in memory as tensors, with an optional per-item transform.

    Items are `(image, label)` with `image` a float `(C, H, W)` tensor and `label` an int; uint8
    images are scaled to [0, 1] per item (so a large uint8 dataset stays small in memory).

    Args:
        images: `(N, C, H, W)` float or uint8 tensor.
        labels: `(N,)` integer tensor.
        transform: applied to each float image, e.g. augmentation and normalisation.
        num_classes: number of classes of the labelling.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        transform: Transform | None = None,
        num_classes: int | None = None,
    ) -> None:
        if images.dim() != 4 or labels.dim() != 1 or len(images) != len(labels):
            raise ConfigError(
                f"TensorImageDataset: need images (N, C, H, W) and labels (N,), got "
                f"{tuple(images.shape)} and {tuple(labels.shape)}"
            )
        self.images = images
        self.labels = labels
        self.transform = transform
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self.images[index]
        image = image.float() / 255.0 if image.dtype == torch.uint8 else image
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])
