"""Tests for building data sets and models from experiment configs (local files only)."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import spa
from spa.adapters import ADAPTER_KINDS
from spa.errors import ConfigError
from spa.experiments.build import adapter_config, build_datasets, build_models, method_label
from spa.experiments.config import AdapterSection, DataConfig, ModelConfig
from spa.models import create_model


def _cifar_batch(path: Path, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    content = {
        b"labels": [int(v) for v in rng.integers(0, 10, count)],
        b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
    }
    path.write_bytes(pickle.dumps(content))


def test_build_datasets_reads_cifar10_batches(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for index in range(1, 6):
        _cifar_batch(folder / f"data_batch_{index}", 2, index)
    _cifar_batch(folder / "test_batch", 3, 0)
    train, test = build_datasets(DataConfig(name="cifar10", root=str(tmp_path)))
    assert (len(train), len(test)) == (10, 3)
    assert train[0][0].shape == (3, 32, 32) and train.num_classes == 10


def test_build_datasets_reads_image_folder_with_split_file(tmp_path: Path) -> None:
    rows = ["relative_path,split"]
    for class_name in ("cat", "dog"):
        (tmp_path / class_name).mkdir()
        for index, split in enumerate(("train", "train", "test")):
            pixels = np.full((10, 14, 3), 40 * index + (class_name == "dog") * 100, np.uint8)
            Image.fromarray(pixels).save(tmp_path / class_name / f"{index}.png")
            rows.append(f"{class_name}/{index}.png,{split}")
    (tmp_path / "splits.csv").write_text("\n".join(rows) + "\n")
    config = DataConfig(name="image_folder", root=str(tmp_path), options={"image_size": 16})
    train, test = build_datasets(config)
    assert (len(train), len(test)) == (4, 2)
    assert test[0][0].shape == (3, 16, 16)
    assert sorted(label for _, label in test) == [0, 1]


def test_build_datasets_unknown_name_lists_known() -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'mnist'; known: .*digits"):
        build_datasets(DataConfig(name="mnist"))


def test_build_models_from_weights_file_keeps_stored_head_in_base(tmp_path: Path) -> None:
    source = create_model("tiny_convnet", num_classes=10, in_channels=1, width=4)
    path = tmp_path / "source.pt"
    torch.save(source.state_dict(), path)
    config = ModelConfig(name="tiny_convnet", options={"width": 4}, weights=str(path))
    base, model = build_models(config, num_classes=3, in_channels=1)
    assert base.fc.out_features == 10 and model.fc.out_features == 3
    for name, tensor in source.state_dict().items():
        torch.testing.assert_close(base.state_dict()[name], tensor, rtol=0, atol=0)
        if not name.startswith("fc."):
            torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0)
            assert model.state_dict()[name].data_ptr() != base.state_dict()[name].data_ptr()


def test_build_models_without_weights_base_equals_task_model() -> None:
    config = ModelConfig(name="tiny_convnet", options={"width": 4})
    base, model = build_models(config, num_classes=2, in_channels=3)
    assert model.conv1.in_channels == 3 and model.fc.out_features == 2
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(base.state_dict()[name], tensor, rtol=0, atol=0)


def test_build_models_bad_weights_file_names_key(tmp_path: Path) -> None:
    other = create_model("tiny_convnet", num_classes=10, in_channels=1, width=8)
    path = tmp_path / "other.pt"
    torch.save(other.state_dict(), path)
    config = ModelConfig(name="tiny_convnet", options={"width": 4}, weights=str(path))
    with pytest.raises(ConfigError, match=r"other\.pt: key 'conv1\.weight' has shape"):
        build_models(config, num_classes=3, in_channels=1)


def test_build_models_head_must_exist(tmp_path: Path) -> None:
    source = create_model("tiny_convnet", num_classes=10, in_channels=1, width=4)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    config = ModelConfig(
        name="tiny_convnet", options={"width": 4}, weights=str(tmp_path / "w.pt"), head="classifier"
    )
    with pytest.raises(
        ConfigError, match=r"'model\.head': the weights file .*w\.pt has no 'classifier\.weight'"
    ):
        build_models(config, num_classes=3, in_channels=1)


def test_build_models_transformers_from_local_directory(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTForImageClassification

    vit = ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=1,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=5,
    )
    ViTForImageClassification(vit).save_pretrained(tmp_path / "vit")
    config = ModelConfig(name="transformers", path=str(tmp_path / "vit"), head="classifier")
    base, model = build_models(config, num_classes=3, in_channels=1)
    logits = model(torch.randn(2, 1, 8, 8))
    assert logits.shape == (2, 3)


@pytest.mark.parametrize("name", ADAPTER_KINDS.names())
def test_adapter_config_is_the_kinds_config_with_the_task_head(name: str) -> None:
    kind = ADAPTER_KINDS.get(name)
    config = adapter_config(AdapterSection.from_table({"kind": name}), "fc")
    assert config == dataclasses.replace(kind.config_type(), head_modules=["fc"])


def test_lora_preset_is_splora_with_its_own_label() -> None:
    lora = AdapterSection.from_table({"kind": "lora", "rank": 4})
    assert adapter_config(lora, "fc") == spa.SPLoRAConfig(rank=4, head_modules=["fc"])
    assert (lora.pruning, method_label(lora)) == ("none", "LoRA r4")


def test_method_label_fills_the_kinds_template() -> None:
    splora = AdapterSection.from_table({"kind": "splora", "rank": 32})
    splopa = AdapterSection.from_table(
        {"kind": "splopa", "num_prototypes": 4, "block_shape": [2, 8]}
    )
    assert (method_label(splora), method_label(splopa)) == ("SPLoRA r32", "SPLoPA R4 2x8")
