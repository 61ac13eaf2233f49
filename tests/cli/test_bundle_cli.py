"""`spa bundle info|verify` and `spa export` on a tiny registry model."""

from __future__ import annotations

import copy
import stat

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

import spa
from spa.cli import main
from spa.errors import BundleError
from spa.models import create_model
from spa.tasks import load_task, save_task, signing
from spa.tasks.export import load_exported

MODEL_ARGS = ["--model", "tiny_convnet", "--num-classes", "3", "--model-arg", "width=4"]


@pytest.fixture
def files(tmp_path):
    base = create_model("tiny_convnet", num_classes=3, width=4).eval()
    base_path = tmp_path / "base.safetensors"
    safetensors.torch.save_file(base.state_dict(), str(base_path))
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2))
    for _, layer in spa.adapter_layers(model):
        nn.init.normal_(layer.up)
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    bundle_path = tmp_path / "task.safetensors"
    save_task(model, bundle_path, base_model=base, model_name="tiny_convnet")
    return base, model.eval(), base_path, bundle_path


def test_bundle_info_prints_metadata(files, capsys):
    _, model, _, bundle_path = files
    assert main(["bundle", "info", str(bundle_path)]) == 0
    out = capsys.readouterr().out
    assert f"dParams:         {spa.count_learned_parameters(model):,}" in out
    assert f"bytes on disk:   {bundle_path.stat().st_size:,}" in out
    assert "SPLoRAConfig" in out and "layer1.conv2" in out


def test_bundle_verify_accepts_its_base(files, capsys):
    _, _, base_path, bundle_path = files
    assert main(["bundle", "verify", str(bundle_path), "--base", str(base_path), *MODEL_ARGS]) == 0
    assert "OK" in capsys.readouterr().out


def test_bundle_verify_reads_the_architecture_recorded_in_the_bundle(files, tmp_path, capsys):
    base, model, base_path, _ = files
    bundle_path = tmp_path / "described.safetensors"
    options = {"num_classes": 3, "width": 4}
    save_task(model, bundle_path, base_model=base, model_name="tiny_convnet", model_options=options)
    assert main(["bundle", "verify", str(bundle_path), "--base", str(base_path)]) == 0
    assert "OK" in capsys.readouterr().out
    # Without recorded options the default builder (width 16) does not fit the weights file.
    assert main(["bundle", "verify", str(files[3]), "--base", str(base_path)]) == 1
    assert "base.safetensors" in capsys.readouterr().err


def test_bundle_verify_refuses_other_base(files, tmp_path, capsys):
    _, _, _, bundle_path = files
    other = create_model("tiny_convnet", num_classes=3, width=4)
    other_path = tmp_path / "other.safetensors"
    safetensors.torch.save_file(other.state_dict(), str(other_path))
    assert main(["bundle", "verify", str(bundle_path), "--base", str(other_path), *MODEL_ARGS]) == 1
    assert "trained against base sha256:" in capsys.readouterr().err


def test_export_safetensors_loads_without_adapters(files, tmp_path):
    base, model, base_path, bundle_path = files
    out = tmp_path / "task_model.safetensors"
    assert (
        main(["export", str(bundle_path), "--base", str(base_path), *MODEL_ARGS, "-o", str(out)])
        == 0
    )
    exported = load_exported(out)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model(x), rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, spa.SPLoRALayer) for m in exported.modules())


def test_load_exported_refuses_a_bundle(files):
    _, _, _, bundle_path = files
    with pytest.raises(BundleError, match="not a spa-exported-model file"):
        load_exported(bundle_path)


@pytest.mark.slow
def test_export_onnx_matches_pytorch(files, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    base, model, base_path, bundle_path = files
    out = tmp_path / "task.onnx"
    args = ["export", str(bundle_path), "--base", str(base_path), *MODEL_ARGS, "-o", str(out)]
    assert main([*args, "--format", "onnx", "--input-shape", "1,1,8,8"]) == 0
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 1, 8, 8)  # another batch size than traced: the batch axis is dynamic
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = load_task(base, bundle_path)(x)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_export_transformers_needs_a_transformers_base(files, tmp_path, capsys):
    _, _, base_path, bundle_path = files
    out = tmp_path / "out"
    args = ["export", str(bundle_path), "--base", str(base_path), *MODEL_ARGS, "-o", str(out)]
    assert main([*args, "--format", "transformers"]) == 1
    assert "needs --base to be a local transformers model directory" in capsys.readouterr().err
    assert not out.exists()


def test_bundle_keygen_sign_verify_with_trusted_key(files, tmp_path, capsys):
    _, _, base_path, bundle_path = files
    key = tmp_path / "signer.pem"
    assert main(["bundle", "keygen", str(key)]) == 0
    public = tmp_path / "signer.pem.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    key_id = capsys.readouterr().out.split("key id: ")[1].strip()
    assert key_id == signing.key_id(signing.load_public_key(public))
    verify = ["bundle", "verify", str(bundle_path), "--trusted-key", str(public)]
    assert main(verify) == 1  # unsigned yet
    assert "is not signed" in capsys.readouterr().err
    assert main(["bundle", "sign", str(bundle_path), "--key", str(key)]) == 0
    assert key_id in capsys.readouterr().out
    assert main([*verify, "--base", str(base_path), *MODEL_ARGS]) == 0
    out = capsys.readouterr().out
    assert f"signed by trusted key {key_id}" in out and "fits base" in out
    assert main(["bundle", "info", str(bundle_path)]) == 0
    assert f"signed by:       {key_id}" in capsys.readouterr().out


def test_bundle_verify_refuses_a_bundle_signed_by_another_key(files, tmp_path, capsys):
    _, _, _, bundle_path = files
    for name in ("mine.pem", "theirs.pem"):
        assert main(["bundle", "keygen", str(tmp_path / name)]) == 0
    signed = tmp_path / "signed.safetensors"
    sign = ["bundle", "sign", str(bundle_path), "--key", str(tmp_path / "theirs.pem")]
    assert main([*sign, "-o", str(signed)]) == 0
    capsys.readouterr()
    trusted = ["--trusted-key", str(tmp_path / "mine.pem.pub")]
    assert main(["bundle", "verify", str(signed), *trusted]) == 1
    assert "not among the trusted keys" in capsys.readouterr().err
    both = [*trusted, "--trusted-key", str(tmp_path / "theirs.pem.pub")]  # key rotation
    assert main(["bundle", "verify", str(signed), *both]) == 0


def test_bundle_keygen_refuses_to_overwrite_a_key(tmp_path, capsys):
    key = tmp_path / "signer.pem"
    assert main(["bundle", "keygen", str(key)]) == 0
    before = key.read_bytes()
    assert main(["bundle", "keygen", str(key)]) == 1
    assert "--force" in capsys.readouterr().err
    assert key.read_bytes() == before
    assert main(["bundle", "keygen", str(key), "--force"]) == 0
    assert key.read_bytes() != before


def test_bundle_verify_needs_a_base_or_a_trusted_key(files, capsys):
    assert main(["bundle", "verify", str(files[3])]) == 1
    assert "needs --base, --trusted-key, or both" in capsys.readouterr().err
