"""A signature names its task and base: a signed bundle copied over another task's file name is
refused; a key file with several public keys trusts all of them; v1 signatures get a clear
message."""

from __future__ import annotations

import json
import shutil
import struct

import pytest

from spa.errors import BundleError, ConfigError
from spa.tasks import load_task, read_bundle
from spa.tasks.format import signed_message, write_bundle
from spa.tasks.signing import (
    generate_private_key,
    load_public_key,
    public_pem,
    signer,
    trusted_key_set,
    verify_bundle,
)

from .helpers import outputs
from .test_signing import _save, task  # noqa: F401  (fixture)


def test_a_signed_bundle_copied_over_another_tasks_name_is_refused(task):  # noqa: F811
    base, _, x, tmp_path = task
    key = generate_private_key()
    t2 = _save(task, "t2.safetensors", key)
    t1 = tmp_path / "t1.safetensors"
    shutil.copy(t2, t1)  # t2's outputs would be served as "t1"
    with pytest.raises(BundleError, match="signed for task 't2', loaded as task 't1'"):
        load_task(base, t1, trusted_keys=key.public_key())
    renamed = load_task(base, t1, trusted_keys=key.public_key(), task_name="t2")  # explicit
    assert outputs(renamed, x).equal(outputs(load_task(base, t2), x))


def test_the_signature_binds_the_base_fingerprint(task):  # noqa: F811
    base, _, _, tmp_path = task
    key = generate_private_key()
    path = _save(task, "t.safetensors", key)
    bundle = read_bundle(path)
    record = bundle.signature
    bundle.metadata["base_fingerprint"] = "sha256:" + "0" * 64  # claim another base
    for field in ("tensor_layout", "checksum"):
        bundle.metadata.pop(field)
    write_bundle(path, bundle, sign=lambda message: record)  # old signature, resealed checksum
    with pytest.raises(BundleError, match="does not match the bundle's content"):
        verify_bundle(read_bundle(path), trusted_key_set(key.public_key()), task="t")
    assert b'"base_fingerprint":"sha256:000' in signed_message(bundle.metadata, "t")


def test_a_key_file_with_several_public_keys_trusts_every_one(task):  # noqa: F811
    base, _, _, tmp_path = task
    first, second = generate_private_key(), generate_private_key()
    keys = tmp_path / "trusted.pub"
    keys.write_bytes(public_pem(first.public_key()) + public_pem(second.public_key()))
    path = _save(task, "t.safetensors", second)  # signed by the second key in the file
    load_task(base, path, trusted_keys=keys)
    assert len(trusted_key_set(keys)) == 2
    with pytest.raises(ConfigError, match="holds 2 public keys"):
        load_public_key(keys)
    keys.write_bytes(
        public_pem(first.public_key()) + b"-----BEGIN PUBLIC KEY-----\nAAAA\n"
        b"-----END PUBLIC KEY-----\n"
    )
    with pytest.raises(ConfigError, match=r"trusted.pub \(key 2 of 2\): not a PEM public key"):
        trusted_key_set(keys)


def _add_header_field(path, name, value):
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    header["__metadata__"][name] = value
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + size :])


def test_a_version_1_signature_verifies_and_is_refused_where_a_task_is_expected(task):  # noqa: F811
    base, _, _, tmp_path = task
    key = generate_private_key()
    path = _save(task, "old.safetensors")
    v1 = signer(key)(signed_message(read_bundle(path).metadata))  # spa 0.1: no task named
    _add_header_field(path, "spa_signature", json.dumps(v1))
    trusted = trusted_key_set(key.public_key())
    assert verify_bundle(read_bundle(path), trusted) == v1["key_id"]
    with pytest.raises(BundleError, match=r"signature v1.*re-sign it: spa bundle sign"):
        load_task(base, path, trusted_keys=key.public_key())
