"""save_task + load_task: bundle + base == the trained task model (DESIGN §4, invariant 3)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import spa
from spa.deploy import compacted
from spa.errors import BundleError, ConfigError, SpaWarning
from spa.tasks import fingerprint, load_task, plan_task, read_bundle, save_task
from spa.tasks.fingerprint import structure_fingerprint

from ..conftest import ConvNet, ResidualNet, mlp
from .helpers import outputs, trained_task

INPUTS = {1: (2, 4, 7), 2: (2, 4, 6, 6), 3: (2, 4, 4, 4, 4)}


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("config", [spa.SPLoRAConfig(rank=3), spa.FinePruningConfig()])
def test_load_task_exact_norms_is_bit_identical(tmp_path, dims, config):
    base = ConvNet(spatial_dims=dims).eval()
    x = torch.randn(INPUTS[dims])
    model = trained_task(base, config, x)
    path = tmp_path / "task.safetensors"
    save_task(model, path, base_model=base, norm_statistics="exact", keep_masks=True)
    task = load_task(base, path)
    assert torch.equal(outputs(task, x), outputs(model, x))
    assert not torch.allclose(outputs(task, x), outputs(base, x))
    assert not any(isinstance(m, spa.SPLoRALayer) for m in task.modules())


@pytest.mark.parametrize("config", [spa.SPLoRAConfig(rank=2), spa.FinePruningConfig()])
def test_load_task_folded_norms_match_to_rounding(tmp_path, config):
    base = ResidualNet().eval()
    x = torch.randn(3, 3, 8, 8)
    model = trained_task(base, config, x)
    path = tmp_path / "task.safetensors"
    save_task(model, path, base_model=base, keep_masks=True)
    task = load_task(base, path)
    expected = outputs(model, x)
    torch.testing.assert_close(
        outputs(task, x), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item()
    )


def _splopa_task(shared: bool) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    base = mlp(in_features=12, hidden=16).eval()
    x = torch.randn(5, 12)
    config = spa.SPLoPAConfig(
        block_shape=(4, 4), num_prototypes=3, prototype_rank=2, shared_prototypes=shared
    )
    return base, trained_task(base, config, x), x


@pytest.mark.parametrize("shared", [True, False])
def test_load_task_splopa_roundtrip(tmp_path, shared):
    base, model, x = _splopa_task(shared)
    path = tmp_path / "task.safetensors"
    save_task(compacted(model), path, base_model=base)
    torch.testing.assert_close(
        outputs(load_task(base, path), x), outputs(model, x), rtol=1e-6, atol=1e-6
    )
    banks = {name.split(".")[1] for name in read_bundle(path).tensors if name.startswith("banks.")}
    assert len(banks) == (1 if shared else 2)  # a shared bank is stored once


def test_splopa_bundle_stores_kept_blocks_only(tmp_path):
    base, model, _ = _splopa_task(shared=True)
    path = tmp_path / "task.safetensors"
    save_task(compacted(model), path, base_model=base)
    tensors = read_bundle(path).tensors
    for name, layer in spa.adapter_layers(model):
        kept = int(layer.block_mask.sum())
        expected = layer.block_weights[:, layer.block_mask]  # (R, kept)
        assert tensors[f"layers.{name}.block_weights"].shape == (3, kept)
        assert torch.equal(tensors[f"layers.{name}.block_weights"], expected)


def test_splora_bundle_stores_kept_factors_only(tmp_path):
    base = mlp(in_features=12, hidden=16).eval()
    x = torch.randn(4, 12)
    model = trained_task(base, spa.SPLoRAConfig(rank=3), x)
    path = tmp_path / "task.safetensors"
    save_task(model, path, base_model=base, keep_masks=True)
    tensors = read_bundle(path).tensors
    adapter_values = 0
    for name, layer in spa.adapter_layers(model):
        rows, cols = layer.out_mask, layer.in_mask
        assert torch.equal(tensors[f"layers.{name}.down"], layer.down[rows])
        assert torch.equal(tensors[f"layers.{name}.up"], layer.up[:, cols])
        adapter_values += 3 * (int(rows.sum()) + int(cols.sum()))  # r (|m_row| + |m_col|)
    stored = sum(t.numel() for t in tensors.values() if t.is_floating_point())
    head = model.get_submodule("4")
    assert stored == adapter_values + head.weight.numel()  # head bias is unchanged


def test_bundle_metadata_describes_the_task(tmp_path):
    base = ConvNet().eval()
    x = torch.randn(2, 4, 6, 6)
    model = trained_task(base, spa.SPLoRAConfig(rank=3), x)
    path = tmp_path / "task.safetensors"
    save_task(model, path, base_model=base, keep_masks=True, model_name="convnet")
    metadata = read_bundle(path).metadata
    kept = total = 0
    for _, layer in spa.adapter_layers(model):
        kernel = math.prod(layer.base.weight.shape[2:])
        kept += int(layer.out_mask.sum()) * int(layer.in_mask.sum()) * kernel
        total += layer.base.weight.numel()
    assert metadata["density"] == pytest.approx(kept / total)
    assert metadata["dparams"] == spa.count_learned_parameters(model)
    assert metadata["base_fingerprint"] == fingerprint(base)
    assert metadata["architecture"] == "ConvNet" and metadata["model_name"] == "convnet"
    assert metadata["adapter"]["type"] == "SPLoRAConfig"
    assert metadata["adapter"]["config"]["rank"] == 3
    assert [e["path"] for e in metadata["layers"]] == model.spa_report.adapted


def test_load_task_shares_unchanged_base_tensors(tmp_path):
    base = ConvNet().eval()
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2, target_modules=["conv2"]))
    nn.init.normal_(model.conv2.up)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    path = tmp_path / "task.safetensors"
    save_task(compacted(model), path, base_model=base)
    task = load_task(base, path)
    assert task.conv1.weight is base.conv1.weight and task.bn2.running_mean is base.bn2.running_mean
    assert task.conv2.weight is not base.conv2.weight
    after = base.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # base untouched


def _compact_by_hand(model: nn.Module, kept: torch.Tensor) -> None:
    """Keep hidden units `kept` of the first hidden layer (out of layer 0, in of layer 2)."""
    model.get_submodule("0").select_channels(out_positions=kept)
    model.get_submodule("2").select_channels(in_positions=kept)


@pytest.mark.parametrize(
    ("kept", "selection"), [([0, 2, 3, 9, 15], "mask"), ([9, 0, 3], "indices")]
)
def test_load_task_of_compacted_model(tmp_path, kept, selection):
    base = mlp(in_features=12, hidden=16).eval()
    x = torch.randn(4, 12)
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2))
    for _, layer in spa.adapter_layers(model):
        nn.init.normal_(layer.up)
    _compact_by_hand(model, torch.tensor(kept))
    path = tmp_path / "task.safetensors"
    save_task(compacted(model), path, base_model=base)
    task = load_task(base, path)
    assert task.get_submodule("0").out_features == len(kept)
    assert task.get_submodule("0").weight.shape == (len(kept), 12)
    assert task.get_submodule("2").in_features == len(kept)
    torch.testing.assert_close(outputs(task, x), outputs(model, x), rtol=1e-6, atol=1e-6)
    entry = read_bundle(path).metadata["layers"][0]
    assert entry["out_selection"] == selection


def test_save_task_compacts_masked_model(tmp_path):
    from spa.pruning import apply_masks, channel_groups, compute_masks

    base = ResidualNet().eval()
    x = torch.randn(2, 3, 8, 8)
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2))
    groups = channel_groups(model, (x,))
    apply_masks(
        model, compute_masks(groups, {i: torch.rand(g.size) for i, g in enumerate(groups)}, 0.5)
    )
    for _, layer in spa.adapter_layers(model):
        nn.init.normal_(layer.up)
    path = tmp_path / "task.safetensors"
    save_task(compacted(model, (x,)), path, base_model=base)
    task = load_task(base, path)
    torch.testing.assert_close(outputs(task, x), outputs(model, x), rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in task.parameters()) < sum(p.numel() for p in base.parameters())
    assert isinstance(model.conv_a, spa.SPLoRALayer)  # the model itself is not compacted


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_half_precision_storage(tmp_path, dtype, tolerance):
    base = mlp(in_features=12, hidden=16).eval()
    x = torch.randn(4, 12)
    model = trained_task(base, spa.SPLoRAConfig(rank=3), x)
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    save_task(model, full, base_model=base, keep_masks=True)
    save_task(model, half, base_model=base, keep_masks=True, dtype=dtype)
    stored = {n: t for n, t in read_bundle(half).tensors.items() if t.is_floating_point()}
    assert all(t.dtype == dtype for t in stored.values())
    expected = outputs(model, x)
    got = outputs(load_task(base, half), x)
    torch.testing.assert_close(
        got, expected, rtol=tolerance, atol=tolerance * expected.abs().max().item()
    )
    assert read_bundle(half).size_bytes < read_bundle(full).size_bytes


def test_load_task_refuses_foreign_base(tmp_path):
    base, other = ConvNet().eval(), ConvNet().eval()
    model = trained_task(base, spa.SPLoRAConfig(rank=2), torch.randn(2, 4, 6, 6))
    path = tmp_path / "task.safetensors"
    save_task(model, path, base_model=base, keep_masks=True)
    pattern = (
        f"trained against base {fingerprint(base)} \\(ConvNet\\), but the given base is "
        f"{fingerprint(other)} \\(ConvNet\\)"
    )
    with pytest.raises(BundleError, match=pattern):
        load_task(other, path)


def test_load_task_refuses_missing_layer(tmp_path):
    base = ConvNet().eval()
    model = trained_task(base, spa.SPLoRAConfig(rank=2), torch.randn(2, 4, 6, 6))
    path = tmp_path / "task.safetensors"
    save_task(model, path, base_model=base, keep_masks=True)
    renamed = copy.deepcopy(base)
    renamed.first = renamed.conv1
    del renamed.conv1
    with pytest.raises(BundleError, match="made for another architecture"):
        load_task(renamed, path, strict_fingerprint=False)
    bundle = read_bundle(path)  # past the architecture check, the layer itself is refused
    bundle.metadata["base_structure"] = structure_fingerprint(renamed)
    with (
        pytest.warns(SpaWarning),
        pytest.raises(BundleError, match="layer 'conv1' is missing from the base model"),
    ):
        plan_task(renamed, bundle, strict_fingerprint=False)


def test_load_task_refuses_shape_mismatch(tmp_path):
    base = ConvNet().eval()
    model = trained_task(base, spa.SPLoRAConfig(rank=2), torch.randn(2, 4, 6, 6))
    path = tmp_path / "task.safetensors"
    save_task(model, path, base_model=base, keep_masks=True)
    wider = ConvNet(in_channels=5).eval()
    with pytest.raises(BundleError, match="made for another architecture"):
        load_task(wider, path, strict_fingerprint=False)
    bundle = read_bundle(path)
    bundle.metadata["base_structure"] = structure_fingerprint(wider)
    with (
        pytest.warns(SpaWarning),
        pytest.raises(BundleError, match="shape mismatch at layer 'conv1'"),
    ):
        plan_task(wider, bundle, strict_fingerprint=False)


def test_save_task_refuses_adapted_base(tmp_path):
    base = mlp()
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2))
    with pytest.raises(ConfigError, match="base_model contains adapter layers"):
        save_task(compacted(model), tmp_path / "task.safetensors", base_model=model)


def test_save_task_refuses_other_module_tree(tmp_path):
    model = spa.adapt(mlp(), spa.SPLoRAConfig(rank=2))
    base = nn.Sequential(nn.Linear(12, 16))
    with pytest.raises(ConfigError, match="module '1' is a ReLU in the task model but missing"):
        save_task(compacted(model), tmp_path / "task.safetensors", base_model=base)


@pytest.mark.slow
def test_resnet18_bundle_size_at_30_percent_density(tmp_path):
    from spa.flops import density
    from spa.models import resnet18
    from spa.pruning import apply_masks, channel_groups, compute_masks

    base = resnet18(num_classes=10, small_input=True).eval()
    x = torch.randn(2, 3, 32, 32)
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=8))
    groups = channel_groups(model, (x,))
    scores = {i: torch.rand(g.size) for i, g in enumerate(groups)}
    apply_masks(model, compute_masks(groups, scores, 0.3))
    assert density(model) == pytest.approx(0.3, abs=0.01)
    for _, layer in spa.adapter_layers(model):
        nn.init.normal_(layer.up, std=0.05)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))
    model.eval()
    path = tmp_path / "task.safetensors"
    bundle = save_task(compacted(model, (x,)), path, base_model=base, norm_statistics="folded")
    dparams = spa.count_learned_parameters(spa.pruning.compact(copy.deepcopy(model)))
    assert bundle.metadata["dparams"] == dparams
    size = path.stat().st_size
    assert size <= 1.05 * 4 * dparams + 4 * 1024, (size, dparams)
    task = load_task(base, path)
    torch.testing.assert_close(outputs(task, x), outputs(model, x), rtol=1e-4, atol=1e-4)
    # The default keeps exact BatchNorm statistics: the loaded task equals the compacted,
    # fused trained model bit for bit, at the cost of 2 more values per kept BN channel.
    exact_path = tmp_path / "exact.safetensors"
    save_task(compacted(model), exact_path, base_model=base)
    trained = spa.fuse(spa.pruning.compact(copy.deepcopy(model)))
    assert torch.equal(outputs(load_task(base, exact_path), x), outputs(trained, x))
