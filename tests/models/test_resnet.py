"""Tests for the torchvision-compatible ResNets and `load_torchvision_weights`."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from spa.errors import ConfigError
from spa.models import MODELS, create_model, load_torchvision_weights, resnet18, resnet50


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def resnet50_keys() -> list[str]:
    return list(resnet50().state_dict())


def _expected_keys(blocks_per_stage: tuple[int, ...], convs_per_block: int) -> list[str]:
    """torchvision's key list, written out from its documented module tree."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = ["conv1.weight"] + [f"bn1.{name}" for name in bn]
    for stage, block_count in enumerate(blocks_per_stage, start=1):
        for block in range(block_count):
            prefix = f"layer{stage}.{block}"
            for conv in range(1, convs_per_block + 1):
                keys += [f"{prefix}.conv{conv}.weight"] + [f"{prefix}.bn{conv}.{n}" for n in bn]
            # A projection shortcut exists where the shape changes: the first block of stages
            # 2-4, and of stage 1 for Bottleneck (64 -> 256 channels).
            if block == 0 and (stage > 1 or convs_per_block == 3):
                keys += [f"{prefix}.downsample.0.weight"]
                keys += [f"{prefix}.downsample.1.{n}" for n in bn]
    return keys + ["fc.weight", "fc.bias"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032)],
)
def test_resnet_parameter_count_matches_torchvision(name: str, expected: int) -> None:
    model = create_model(name)
    assert sum(parameter.numel() for parameter in model.parameters()) == expected


@pytest.mark.parametrize(
    ("name", "blocks", "convs"),
    [("resnet18", (2, 2, 2, 2), 2), ("resnet34", (3, 4, 6, 3), 2), ("resnet50", (3, 4, 6, 3), 3)],
)
def test_resnet_state_dict_keys_match_torchvision(
    name: str, blocks: tuple[int, ...], convs: int
) -> None:
    assert list(create_model(name).state_dict()) == _expected_keys(blocks, convs)


def test_resnet50_spot_check_keys(resnet50_keys: list[str]) -> None:
    assert len(resnet50_keys) == 320
    assert "layer4.0.downsample.1.running_var" in resnet50_keys
    assert "layer1.0.conv3.weight" in resnet50_keys
    assert "layer1.0.downsample.0.weight" in resnet50_keys
    assert not any(key.startswith("layer4.2.downsample") for key in resnet50_keys)


def test_resnet50_strides_in_conv2_like_v1_5() -> None:
    block = resnet50().layer2[0]
    assert block.conv1.stride == (1, 1)
    assert block.conv2.stride == (2, 2)
    assert block.downsample[0].stride == (2, 2)


def _output_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Run `model` on `x` and return the output shapes of the stem, `layer4` and the model."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name in ("maxpool", "layer4"):
        getattr(model, name).register_forward_hook(
            lambda _module, _inputs, output, name=name: shapes.__setitem__(name, output.shape)
        )
    with torch.no_grad():
        shapes["logits"] = tuple(model.eval()(x).shape)
    return {name: tuple(shape) for name, shape in shapes.items()}


def test_resnet18_imagenet_stem_output_shape() -> None:
    model = resnet18(num_classes=7)
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert isinstance(model.maxpool, nn.MaxPool2d)
    shapes = _output_shapes(model, torch.randn(1, 3, 64, 64))  # total stride 32
    assert shapes == {"maxpool": (1, 64, 16, 16), "layer4": (1, 512, 2, 2), "logits": (1, 7)}


def test_resnet18_small_input_stem_output_shape() -> None:
    model = resnet18(num_classes=10, small_input=True)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert "bn1.weight" in model.state_dict()
    shapes = _output_shapes(model, torch.randn(1, 3, 32, 32))
    assert shapes == {"maxpool": (1, 64, 32, 32), "layer4": (1, 512, 4, 4), "logits": (1, 10)}


def test_resnet50_small_input_with_width_and_channels() -> None:
    model = resnet50(num_classes=3, small_input=True, width=8, in_channels=1).eval()
    assert model.fc.in_features == 8 * 8 * 4
    with torch.no_grad():
        assert model(torch.randn(2, 1, 16, 16)).shape == (2, 3)


def test_resnet_init_matches_torchvision_scheme() -> None:
    model = resnet18()
    assert torch.equal(model.bn1.weight, torch.ones(64))
    assert torch.equal(model.layer3[0].bn2.bias, torch.zeros(256))
    weight = model.layer4[0].conv2.weight  # (512, 512, 3, 3), fan_out = 512 * 9
    assert weight.std().item() == pytest.approx(math.sqrt(2 / (512 * 9)), rel=0.02)
    assert weight.mean().abs().item() < 1e-3


def test_create_model_unknown_name_lists_known() -> None:
    with pytest.raises(ConfigError, match="resnet18"):
        create_model("resnet19")
    assert {"resnet18", "resnet34", "resnet50", "tiny_convnet", "mlp", "tiny_llama"} <= set(
        MODELS.names()
    )


def test_create_model_rejects_unknown_keyword() -> None:
    with pytest.raises(ConfigError, match="num_class"):
        create_model("resnet18", num_class=10)


def _small(num_classes: int = 10) -> nn.Module:
    return resnet18(num_classes=num_classes, small_input=True, width=4)


def test_load_torchvision_weights_round_trip_pth(tmp_path: Path) -> None:
    source, target = _small(), _small()
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    report = load_torchvision_weights(target, path)
    assert report.skipped == {}
    assert len(report.loaded) == len(source.state_dict())
    loaded = target.state_dict()
    assert [
        key for key, value in source.state_dict().items() if not torch.equal(loaded[key], value)
    ] == []


def test_load_torchvision_weights_round_trip_safetensors(tmp_path: Path) -> None:
    source, target = _small(), _small()
    path = tmp_path / "weights.safetensors"
    save_file(source.state_dict(), str(path))
    load_torchvision_weights(target, path)
    torch.testing.assert_close(target.fc.weight, source.fc.weight, rtol=0, atol=0)


def test_load_torchvision_weights_allows_missing_num_batches_tracked(tmp_path: Path) -> None:
    source, target = _small(), _small()
    state = {k: v for k, v in source.state_dict().items() if "num_batches_tracked" not in k}
    torch.save(state, tmp_path / "release.pth")
    report = load_torchvision_weights(target, tmp_path / "release.pth")
    assert len(report.loaded) == len(state)
    torch.testing.assert_close(target.conv1.weight, source.conv1.weight, rtol=0, atol=0)


def test_load_torchvision_weights_wrong_shape_names_file_and_key(tmp_path: Path) -> None:
    state = _small().state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(4, 4, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    target = _small()
    before = target.layer1[0].conv1.weight.clone()
    with pytest.raises(
        ConfigError,
        match=r"bad\.pth: key 'layer1\.0\.conv1\.weight' has shape \(4, 4, 1, 1\) in the file "
        r"but \(4, 4, 3, 3\) in the model",
    ):
        load_torchvision_weights(target, path)
    torch.testing.assert_close(target.layer1[0].conv1.weight, before, rtol=0, atol=0)


def test_load_torchvision_weights_head_mismatch_suggests_skip_head(tmp_path: Path) -> None:
    torch.save(_small(num_classes=1000).state_dict(), tmp_path / "imagenet.pth")
    with pytest.raises(ConfigError, match="'fc.weight'.*skip_head=True"):
        load_torchvision_weights(_small(num_classes=10), tmp_path / "imagenet.pth")


def test_load_torchvision_weights_skip_head_reports_and_keeps_head(tmp_path: Path) -> None:
    source, target = _small(num_classes=1000), _small(num_classes=10)
    torch.save(source.state_dict(), tmp_path / "imagenet.pth")
    head_before = target.fc.weight.clone()
    report = load_torchvision_weights(target, tmp_path / "imagenet.pth", skip_head=True)
    assert set(report.skipped) == {"fc.weight", "fc.bias"}
    assert "(1000, 32) in the file" in report.skipped["fc.weight"]
    torch.testing.assert_close(target.fc.weight, head_before, rtol=0, atol=0)
    torch.testing.assert_close(target.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_load_torchvision_weights_missing_key(tmp_path: Path) -> None:
    state = _small().state_dict()
    del state["layer2.0.downsample.1.running_mean"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ConfigError, match=r"partial\.pth: key 'layer2\.0\.downsample\.1"):
        load_torchvision_weights(_small(), tmp_path / "partial.pth")


def test_load_torchvision_weights_unexpected_key(tmp_path: Path) -> None:
    state = _small().state_dict()
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(ConfigError, match="'extra.weight' is in the file but not in the model"):
        load_torchvision_weights(_small(), tmp_path / "extra.pth")


def test_load_torchvision_weights_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nothing.pth: weights file not found"):
        load_torchvision_weights(_small(), tmp_path / "nothing.pth")


def test_load_torchvision_weights_refuses_non_tensor_pickle(tmp_path: Path) -> None:
    torch.save({"conv1.weight": Path("x")}, tmp_path / "objects.pth")
    with pytest.raises(ConfigError, match="objects.pth: cannot read weights"):
        load_torchvision_weights(_small(), tmp_path / "objects.pth")
