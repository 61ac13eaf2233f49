"""Tests for the digits transfer tasks and the dataset registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from spa.data import DATASETS, load_dataset
from spa.data.digits import DIGITS_TASKS, digits_task, split_digits
from spa.errors import ConfigError


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_digits().target.astype(np.int64)


def test_split_digits_partitions_every_image(digits: np.ndarray) -> None:
    indices = split_digits(digits, seed=3)
    combined = np.concatenate(list(indices.values()))
    assert sorted(combined.tolist()) == list(range(len(digits)))


def test_split_digits_is_stratified(digits: np.ndarray) -> None:
    indices = split_digits(digits, seed=3, test_fraction=0.25)
    for digit in range(10):
        total = int((digits == digit).sum())
        source = (digits[indices[("source", "train")]] == digit).sum() + (
            digits[indices[("source", "test")]] == digit
        ).sum()
        test = (digits[indices[("target", "test")]] == digit).sum()
        assert abs(int(source) - total / 2) <= 0.5
        assert abs(int(test) - (total - int(source)) * 0.25) <= 0.5


def test_split_digits_is_deterministic_per_seed(digits: np.ndarray) -> None:
    first, again, other = (split_digits(digits, seed=s) for s in (1, 1, 2))
    assert all(np.array_equal(first[key], again[key]) for key in first)
    assert not np.array_equal(first[("source", "train")], other[("source", "train")])


@pytest.mark.parametrize(
    ("task", "relabel"),
    [
        ("source", lambda d: d),
        ("parity", lambda d: d % 2),
        ("mod3", lambda d: d % 3),
        ("ge5", lambda d: (d >= 5).astype(np.int64)),
    ],
)
def test_digits_task_labels_follow_definition(digits: np.ndarray, task: str, relabel) -> None:
    pool = "source" if task == "source" else "target"
    indices = split_digits(digits, seed=0)[(pool, "test")]
    dataset = digits_task(task, "test", seed=0)
    assert dataset.labels.tolist() == relabel(digits[indices]).tolist()
    assert dataset.num_classes == len(set(relabel(np.arange(10)).tolist()))


def test_digits_task_images_are_upsampled_and_normalised() -> None:
    bunch = load_digits()
    raw = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    expected = F.interpolate(raw, size=(16, 16), mode="bilinear", align_corners=False)
    expected = (expected - expected.mean()) / expected.std()
    indices = split_digits(bunch.target, seed=5)[("target", "train")]
    dataset = digits_task("parity", "train", seed=5, size=16)
    image, label = dataset[0]
    assert image.shape == (1, 16, 16) and isinstance(label, int)
    torch.testing.assert_close(image, expected[indices[0]], rtol=1e-5, atol=1e-5)


def test_digits_all_images_have_zero_mean_unit_std() -> None:
    images = torch.cat(
        [
            digits_task(task, split).images
            for task in ("source", "parity")
            for split in ("train", "test")
        ]
    )
    assert len(images) == 1797
    assert images.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert images.std().item() == pytest.approx(1.0, abs=1e-4)


def test_digits_target_tasks_share_images() -> None:
    parity, mod3 = digits_task("parity", "train"), digits_task("mod3", "train")
    torch.testing.assert_close(parity.images, mod3.images, rtol=0, atol=0)
    assert not torch.equal(parity.labels, mod3.labels)


def test_digits_source_and_target_pools_are_disjoint(digits: np.ndarray) -> None:
    indices = split_digits(digits, seed=0)
    source = set(indices[("source", "train")]) | set(indices[("source", "test")])
    target = set(indices[("target", "train")]) | set(indices[("target", "test")])
    assert not source & target


def test_digits_three_channels_repeat_grey() -> None:
    image, _ = digits_task("ge5", "train", channels=3, size=8)[3]
    assert image.shape == (3, 8, 8)
    torch.testing.assert_close(image[0], image[2], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "prime"}, "unknown digits task 'prime'; known: source, parity, mod3, ge5"),
        ({"split": "val"}, "split must be 'train' or 'test', got 'val'"),
        ({"channels": 2}, "channels must be 1 or 3, got 2"),
        ({"test_fraction": 1.0}, r"test_fraction must be in \(0, 1\), got 1.0"),
    ],
)
def test_digits_task_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    arguments = {"name": "source", "split": "train"} | kwargs
    with pytest.raises(ConfigError, match=message):
        digits_task(**arguments)


def test_load_dataset_digits_passes_task() -> None:
    dataset = load_dataset("digits", None, "test", task="mod3", size=8)
    assert dataset.num_classes == 3
    assert set(DIGITS_TASKS) == {"source", "parity", "mod3", "ge5"}
    assert {"digits", "cifar10", "image_folder"} <= set(DATASETS.names())


def test_load_dataset_rejects_unknown_split() -> None:
    with pytest.raises(ConfigError, match="split must be one of .*got 'validation'"):
        load_dataset("digits", None, "validation")


def test_load_dataset_rejects_unknown_option() -> None:
    with pytest.raises(ConfigError, match="dataset 'digits': invalid options \\['colour'\\]"):
        load_dataset("digits", None, "train", colour=True)


def test_load_dataset_unknown_name_lists_known() -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'mnist'; known: cifar10, digits"):
        load_dataset("mnist", None, "train")
