"""Ed25519 bundle signatures: signed, unsigned, tampered, wrong key, key rotation."""

from __future__ import annotations

import json
import os
import stat
import struct

import pytest
import torch

import spa
from spa.errors import BundleError, ConfigError
from spa.tasks import TaskHost, load_task, read_bundle, save_task
from spa.tasks.format import write_bundle
from spa.tasks.signing import (
    generate_private_key,
    key_id,
    load_public_key,
    signer,
    write_key_pair,
)

from ..conftest import ConvNet
from .helpers import outputs, trained_task


@pytest.fixture
def task(tmp_path):
    base = ConvNet().eval()
    x = torch.randn(2, 4, 6, 6)
    model = trained_task(base, spa.SPLoRAConfig(rank=2), x)
    return base, model, x, tmp_path


def _save(task, name, key=None):
    base, model, _, tmp_path = task
    path = tmp_path / name
    save_task(model, path, base_model=base, keep_masks=True, signing_key=key)
    return path


def test_signed_bundle_loads_with_its_trusted_key(task):
    base, model, x, _ = task
    key = generate_private_key()
    path = _save(task, "signed.safetensors", key)
    loaded = load_task(base, path, trusted_keys=[key.public_key()])
    assert torch.equal(outputs(loaded, x), outputs(load_task(base, path), x))
    torch.testing.assert_close(outputs(loaded, x), outputs(model, x), rtol=0, atol=0)
    assert read_bundle(path).signature["key_id"] == key_id(key.public_key())


def test_unsigned_bundle_loads_without_trusted_keys_only(task):
    base, _, x, _ = task
    path = _save(task, "unsigned.safetensors")
    assert read_bundle(path).signature is None
    load_task(base, path)
    with pytest.raises(BundleError, match="is not signed, and trusted keys are required"):
        load_task(base, path, trusted_keys=[generate_private_key().public_key()])


def test_bundle_signed_by_another_key_is_refused(task):
    base, _, _, _ = task
    path = _save(task, "signed.safetensors", generate_private_key())
    trusted = generate_private_key().public_key()
    with pytest.raises(BundleError, match="which is not among the trusted keys"):
        load_task(base, path, trusted_keys=[trusted])


def test_tampered_signed_bundle_is_refused_even_with_recomputed_checksum(task):
    base, _, _, _ = task
    key = generate_private_key()
    path = _save(task, "signed.safetensors", key)
    bundle = read_bundle(path)
    signature = bundle.signature
    bundle.tensors = dict(bundle.tensors)
    bundle.tensors["modules.fc.weight"] = bundle.tensors["modules.fc.weight"] + 1
    for field in ("tensor_layout", "checksum"):
        bundle.metadata.pop(field)
    write_bundle(path, bundle, sign=lambda message: signature)  # old signature, new content
    load_task(base, path)  # the checksum alone cannot tell
    with pytest.raises(BundleError, match="does not match the bundle's content"):
        load_task(base, path, trusted_keys=[key.public_key()])


def test_signature_record_swapped_key_id_is_refused(task):
    base, _, _, tmp_path = task
    signing, trusted = generate_private_key(), generate_private_key()
    path = _save(task, "signed.safetensors", signing)
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    record = json.loads(header["__metadata__"]["spa_signature"])
    record["key_id"] = key_id(trusted.public_key())  # claim the trusted key signed it
    header["__metadata__"]["spa_signature"] = json.dumps(record)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + size :])
    with pytest.raises(BundleError, match="does not match the bundle's content"):
        load_task(base, path, trusted_keys=[trusted.public_key()])


def test_key_rotation_trusts_old_and_new_keys_then_only_new(task):
    base, _, _, _ = task
    old, new = generate_private_key(), generate_private_key()
    old_path = _save(task, "old.safetensors", old)
    new_path = _save(task, "new.safetensors", new)
    both = [old.public_key(), new.public_key()]
    load_task(base, old_path, trusted_keys=both)
    load_task(base, new_path, trusted_keys=both)
    with pytest.raises(BundleError, match="not among the trusted keys"):
        load_task(base, old_path, trusted_keys=[new.public_key()])
    bundle = read_bundle(old_path)  # re-sign the old bundle with the new key
    write_bundle(old_path, bundle, sign=signer(new))
    load_task(base, old_path, trusted_keys=[new.public_key()])


def test_key_files_roundtrip_with_private_key_mode_0600(task):
    base, _, _, tmp_path = task
    key = generate_private_key()
    public_path = write_key_pair(key, tmp_path / "signer.pem")
    assert stat.S_IMODE((tmp_path / "signer.pem").stat().st_mode) == 0o600
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(public_path.stat().st_mode) == 0o666 & ~umask
    path = _save(task, "signed.safetensors", tmp_path / "signer.pem")
    load_task(base, path, trusted_keys=public_path)
    assert key_id(load_public_key(public_path)) == key_id(key.public_key())


def test_unreadable_trusted_key_is_a_config_error(task):
    base, _, _, tmp_path = task
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="junk.pem: not a PEM public key"):
        TaskHost(base, trusted_keys=[tmp_path / "junk.pem"])
    with pytest.raises(ConfigError, match="trusted_keys is empty"):
        TaskHost(base, trusted_keys=[])


def test_task_host_with_trusted_keys_refuses_and_keeps_serving(task):
    base, model, x, _ = task
    key = generate_private_key()
    good = _save(task, "good.safetensors", key)
    unsigned = _save(task, "unsigned.safetensors")
    foreign = _save(task, "foreign.safetensors", generate_private_key())
    host = TaskHost(base, trusted_keys=[key.public_key()])
    host.add_task("good", good)
    host.set_task("good")
    for name, path in (("unsigned", unsigned), ("foreign", foreign)):
        with pytest.raises(BundleError):
            host.add_task(name, path)
        assert host.tasks == ["good"]
        assert torch.equal(host(x), outputs(model, x))
