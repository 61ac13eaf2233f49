"""Tests for class-per-folder image datasets, the split file and the torch-only transforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spa.data import load_dataset
from spa.data.image_folder import decode_image, load_image_folder, read_split_file
from spa.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CenterCrop,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
)
from spa.errors import ConfigError


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _pixels(seed: int, height: int = 12, width: int = 18) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "pets"
    for class_name, count in (("dog", 2), ("cat", 3)):
        (root / class_name).mkdir(parents=True)
        for index in range(count):
            Image.fromarray(_pixels(index + 10 * len(class_name))).save(
                root / class_name / f"{index}.png"
            )
    Image.fromarray(_pixels(99)).save(root / "cat" / "photo.jpg", quality=95)
    (root / "splits.csv").write_text(
        "relative_path,split\n"
        "# cats\n"
        "cat/0.png,train\n"
        "cat/1.png,val\n"
        "\n"
        "cat/2.png,test\n"
        "cat/photo.jpg,train\n"
        "dog/0.png,train\n"
        "dog/1.png,test\n"
    )
    return root


def _write_split(root: Path, text: str) -> Path:
    path = root / "custom.txt"
    path.write_text(text)
    return path


def test_load_image_folder_train_split_classes_and_labels(folder: Path) -> None:
    dataset = load_image_folder(folder, "train", transform=Compose([]))
    assert dataset.classes == ["cat", "dog"] and dataset.num_classes == 2
    assert [label for _, label in dataset.samples] == [0, 0, 1]
    image, label = dataset[2]
    expected = torch.from_numpy(_pixels(30)).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(image, expected, rtol=0, atol=0)
    assert label == 1


def test_load_image_folder_decodes_jpeg(folder: Path) -> None:
    image = decode_image(folder / "cat" / "photo.jpg")
    assert image.shape == (3, 12, 18)
    assert 0.0 <= image.min().item() and image.max().item() <= 1.0


def test_load_image_folder_default_transforms_shape(folder: Path) -> None:
    train = load_image_folder(folder, "train", image_size=8)
    val = load_dataset("image_folder", folder, "val", image_size=8)
    assert train[0][0].shape == (3, 8, 8)
    assert val[0][0].shape == (3, 8, 8) and len(val) == 1


def test_read_split_file_skips_header_comments_blank_lines(folder: Path) -> None:
    entries = read_split_file(folder / "splits.csv", folder)
    assert entries[0] == ("cat/0.png", "train") and len(entries) == 6


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cat/0.png,train\ncat/1.png,holdout\n", r"custom\.txt:2: split must be one of"),
        ("cat/0.png\n", r"custom\.txt:1: expected `relative_path,split`"),
        ("cat/0.png,train,extra\n", r"custom\.txt:1: expected `relative_path,split`"),
        ("cat/9.png,train\n", r"custom\.txt:1: image .*cat/9\.png not found"),
        ("cat/0.png,train\ncat/0.png,test\n", r"custom\.txt:2: 'cat/0\.png' is already listed"),
        ("splits.csv,train\n", r"custom\.txt:1: path must be `<class_name>/<file>`"),
        ("../pets/cat/0.png,train\n", r"custom\.txt:1: path must be `<class_name>/<file>`"),
        ("cat/notes.txt,train\n", r"custom\.txt:1: 'cat/notes\.txt' is not a"),
    ],
)
def test_read_split_file_errors_name_file_and_line(folder: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_image_folder(folder, "train", split_file=_write_split(folder, text))


def test_load_image_folder_missing_split_file(tmp_path: Path) -> None:
    (tmp_path / "cls").mkdir()
    with pytest.raises(ConfigError, match=r"splits\.csv: split file not found"):
        load_image_folder(tmp_path, "train")


def test_load_image_folder_without_class_folders(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no class folders found"):
        load_image_folder(tmp_path, "train")


def test_load_image_folder_undecodable_image_names_file(folder: Path) -> None:
    (folder / "dog" / "0.png").write_bytes(b"definitely not a png")
    dataset = load_image_folder(folder, "train")
    with pytest.raises(ConfigError, match=r"dog/0\.png: cannot decode image"):
        dataset[2]


def test_load_image_folder_rejects_unknown_split(folder: Path) -> None:
    with pytest.raises(ConfigError, match="split must be one of"):
        load_image_folder(folder, "dev")


def test_normalize_matches_formula() -> None:
    image = torch.rand(3, 4, 5)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    expected = (image - mean[:, None, None]) / std[:, None, None]
    torch.testing.assert_close(Normalize(IMAGENET_MEAN, IMAGENET_STD)(image), expected)


def test_resize_int_sets_shorter_side() -> None:
    assert Resize(10)(torch.rand(3, 20, 40)).shape == (3, 10, 20)
    assert Resize((7, 9))(torch.rand(3, 20, 40)).shape == (3, 7, 9)


def test_resize_constant_image_stays_constant() -> None:
    torch.testing.assert_close(
        Resize(5)(torch.full((1, 13, 13), 0.25)), torch.full((1, 5, 5), 0.25)
    )


def test_center_crop_takes_middle() -> None:
    image = torch.arange(36.0).view(1, 6, 6)
    torch.testing.assert_close(CenterCrop(2)(image), image[:, 2:4, 2:4], rtol=0, atol=0)


def test_center_crop_pads_small_image() -> None:
    crop = CenterCrop(4)(torch.ones(1, 2, 2))
    assert crop.shape == (1, 4, 4)
    assert crop.sum().item() == 4 and crop[0, 1:3, 1:3].sum().item() == 4


def test_random_horizontal_flip_probability_extremes() -> None:
    image = torch.arange(6.0).view(1, 2, 3)
    torch.testing.assert_close(RandomHorizontalFlip(1.0)(image), image.flip(-1), rtol=0, atol=0)
    torch.testing.assert_close(RandomHorizontalFlip(0.0)(image), image, rtol=0, atol=0)


def test_random_crop_is_window_of_padded_image() -> None:
    image = torch.arange(1.0, 17.0).view(1, 4, 4)
    padded = torch.nn.functional.pad(image, (2, 2, 2, 2))
    crop = RandomCrop(4, padding=2, generator=torch.Generator().manual_seed(1))(image)
    windows = [padded[:, top : top + 4, left : left + 4] for top in range(5) for left in range(5)]
    assert any(torch.equal(crop, window) for window in windows)


def test_random_resized_crop_boxes_stay_inside() -> None:
    transform = RandomResizedCrop(8, generator=torch.Generator().manual_seed(0))
    for _ in range(200):
        top, left, height, width = transform.crop_box(30, 50)
        assert 0 <= top and top + height <= 30 and 0 <= left and left + width <= 50
        assert 0.08 * 1500 * 0.9 <= height * width <= 1500
    assert transform(torch.rand(3, 30, 50)).shape == (3, 8, 8)


def test_random_resized_crop_is_reproducible_with_generator() -> None:
    image = torch.rand(3, 20, 20)
    first = RandomResizedCrop(6, generator=torch.Generator().manual_seed(4))(image)
    second = RandomResizedCrop(6, generator=torch.Generator().manual_seed(4))(image)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_random_resized_crop_falls_back_to_central_crop() -> None:
    # No square crop of the full area fits a 10x40 image, so the fallback crop is used.
    transform = RandomResizedCrop(4, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert transform.crop_box(10, 40) == (0, 15, 10, 10)


def test_random_resized_crop_rejects_bad_scale() -> None:
    with pytest.raises(ConfigError, match="scale=\\(0.5, 0.2\\)"):
        RandomResizedCrop(4, scale=(0.5, 0.2))
