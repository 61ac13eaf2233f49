"""Tests for the CIFAR-10 loader and its restricted unpickler."""

from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from spa.data import load_dataset
from spa.data.cifar10 import CIFAR10_MEAN, CIFAR10_STD, load_cifar10, read_cifar_batch
from spa.data.transforms import Compose
from spa.errors import ConfigError

IMAGES_PER_BATCH = 4


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _write_batch(path: Path, data: np.ndarray, labels: list[int]) -> None:
    content = {
        b"batch_label": b"fake batch",
        b"labels": labels,
        b"data": data,
        b"filenames": [f"image_{index}.png".encode() for index in range(len(labels))],
    }
    with path.open("wb") as file:
        pickle.dump(content, file)


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{index}" for index in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(IMAGES_PER_BATCH, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=IMAGES_PER_BATCH).tolist()
        _write_batch(folder / name, data, labels)
    return tmp_path


class _Python2Pickler(pickle._Pickler):
    """Writes bytes and str as Python 2 `str` opcodes, as in the official CIFAR-10 files."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_python2_str(self, obj: bytes | str) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = _save_python2_str
    dispatch[str] = _save_python2_str


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_read_cifar_batch_layout_is_channel_planes(cifar_root: Path) -> None:
    data = np.arange(2 * 3072, dtype=np.int64).reshape(2, 3072) % 251
    path = cifar_root / "layout_batch"
    _write_batch(path, data.astype(np.uint8), [3, 9])
    images, labels = read_cifar_batch(path)
    assert images.shape == (2, 3, 32, 32) and images.dtype == np.uint8
    # Row-major planes: index = channel * 1024 + row * 32 + column.
    assert images[1, 2, 5, 7] == data[1, 2 * 1024 + 5 * 32 + 7]
    assert images[0, 0, 31, 0] == data[0, 31 * 32]
    assert labels.tolist() == [3, 9]


def test_read_cifar_batch_reads_python2_numpy1_pickle(tmp_path: Path) -> None:
    data = (np.arange(2 * 3072) % 256).astype(np.uint8).reshape(2, 3072)
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump({"data": data, "labels": [4, 0]})
    # numpy 1.x, which wrote the official files, names the module `numpy.core.multiarray`.
    raw = buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"cnumpy.core.multiarray\n_reconstruct" in raw
    (tmp_path / "python2_batch").write_bytes(raw)
    images, labels = read_cifar_batch(tmp_path / "python2_batch")
    np.testing.assert_array_equal(images.reshape(2, 3072), data)
    assert labels.tolist() == [4, 0]


def test_load_cifar10_train_concatenates_five_batches(cifar_root: Path) -> None:
    dataset = load_cifar10(cifar_root, "train", transform=Compose([]))
    assert len(dataset) == 5 * IMAGES_PER_BATCH
    images, labels = read_cifar_batch(cifar_root / "cifar-10-batches-py" / "data_batch_2")
    image, label = dataset[IMAGES_PER_BATCH + 1]
    torch.testing.assert_close(image, torch.from_numpy(images[1]).float() / 255, rtol=0, atol=0)
    assert label == int(labels[1])
    assert dataset.num_classes == 10


def test_load_cifar10_test_default_transform_normalises(cifar_root: Path) -> None:
    folder = cifar_root / "cifar-10-batches-py"
    dataset = load_cifar10(folder, "test")  # the batches folder itself also works as root
    images, _ = read_cifar_batch(folder / "test_batch")
    mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(3, 1, 1)
    expected = (torch.from_numpy(images[0]).float() / 255 - mean) / std
    torch.testing.assert_close(dataset[0][0], expected, rtol=1e-6, atol=1e-6)
    assert len(dataset) == IMAGES_PER_BATCH


def test_load_cifar10_train_default_transform_keeps_shape(cifar_root: Path) -> None:
    image, _ = load_dataset("cifar10", cifar_root, "train")[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32


def test_load_cifar10_missing_batch_names_file(cifar_root: Path) -> None:
    (cifar_root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(ConfigError, match="data_batch_3: CIFAR-10 batch file not found"):
        load_cifar10(cifar_root, "train")


def test_load_cifar10_rejects_val_split(cifar_root: Path) -> None:
    with pytest.raises(ConfigError, match="split must be 'train' or 'test', got 'val'"):
        load_cifar10(cifar_root, "val")


def test_read_cifar_batch_refuses_code_and_does_not_run_it(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "evil_batch"
    path.write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": [0]}))
    assert b"system" in path.read_bytes()
    with pytest.raises(ConfigError, match=r"evil_batch: refusing to load global \w+\.system"):
        read_cifar_batch(path)
    assert not marker.exists()


def test_read_cifar_batch_refuses_other_numpy_globals(tmp_path: Path) -> None:
    path = tmp_path / "loader_batch"
    path.write_bytes(pickle.dumps({b"data": np.load, b"labels": []}))
    with pytest.raises(ConfigError, match="loader_batch: refusing to load global numpy"):
        read_cifar_batch(path)


def test_read_cifar_batch_rejects_out_of_range_labels(tmp_path: Path) -> None:
    path = tmp_path / "labels_batch"
    _write_batch(path, np.zeros((2, 3072), dtype=np.uint8), [1, 10])
    with pytest.raises(ConfigError, match="labels_batch: 'labels' must be integers in 0-9"):
        read_cifar_batch(path)


def test_read_cifar_batch_rejects_wrong_shape(tmp_path: Path) -> None:
    path = tmp_path / "shape_batch"
    _write_batch(path, np.zeros((2, 1024), dtype=np.uint8), [1, 2])
    with pytest.raises(ConfigError, match=r"shape_batch: 'data' has shape \(2, 1024\)"):
        read_cifar_batch(path)


def test_read_cifar_batch_rejects_garbage(tmp_path: Path) -> None:
    path = tmp_path / "garbage_batch"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(ConfigError, match="garbage_batch: not a readable CIFAR-10 batch"):
        read_cifar_batch(path)
