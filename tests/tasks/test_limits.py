"""Hostile bundle headers are refused before they are parsed, with a spa error naming the file."""

from __future__ import annotations

import json
import struct

import pytest
import safetensors.torch

from spa.cli import main
from spa.errors import BundleError
from spa.tasks import limits
from spa.tasks.format import FORMAT_NAME, FORMAT_VERSION, read_bundle, write_bundle
from spa.tasks.signing import generate_private_key, signer, trusted_key_set, verify_bundle

from .test_format import _bundle


def _craft(path, document_text: str, body: bytes = b"", raw_header: bytes | None = None):
    """A safetensors-shaped file whose metadata document is `document_text`, byte for byte."""
    header = raw_header or json.dumps({"__metadata__": {"spa_bundle": document_text}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + body)
    return path


def _document(**fields) -> str:
    return json.dumps({"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **fields})


def test_header_over_the_limit_is_refused_from_its_size_alone(tmp_path):
    path = tmp_path / "big.safetensors"
    size = limits.MAX_HEADER_BYTES + 1
    path.write_bytes(struct.pack("<Q", size) + b"{" + b" " * 64)  # claims a 8 MiB header
    with pytest.raises(BundleError, match=r"big.safetensors: header of 8,388,609 bytes exceeds"):
        read_bundle(path)


@pytest.mark.parametrize("where", ["document", "header"])
def test_json_nested_ten_to_the_five_deep_is_refused_before_parsing(tmp_path, where):
    deep = "[" * 100_000 + "]" * 100_000
    path = tmp_path / "deep.safetensors"
    if where == "document":
        _craft(path, deep)
    else:
        _craft(path, "", raw_header=b'{"a":' + deep.encode() + b"}")
    with pytest.raises(BundleError, match=r"deep.safetensors: .* nested over 32 levels"):
        read_bundle(path)


def test_nesting_inside_strings_does_not_count(tmp_path):
    limits.check_json_text(json.dumps({"name": "[" * 1000}), "f", "text")  # no error
    with pytest.raises(BundleError, match="nested over 32"):
        limits.check_json_text("[" * 33 + "]" * 33, "f", "text")
    limits.check_json_text("[" * 32 + "]" * 32, "f", "text")


def test_too_many_json_values_are_refused_before_parsing(tmp_path):
    path = _craft(tmp_path / "wide.safetensors", "[" + "0," * limits.MAX_JSON_VALUES + "0]")
    with pytest.raises(
        BundleError, match=rf"wide.safetensors: .* over {limits.MAX_JSON_VALUES:,} JSON values"
    ):
        read_bundle(path)


def test_a_list_longer_than_the_entry_limit_is_refused_by_name(tmp_path):
    layout = [[f"t{i:06d}", "float32", [0]] for i in range(limits.MAX_ENTRIES + 1)]
    path = _craft(tmp_path / "many.safetensors", _document(tensor_layout=layout))
    with pytest.raises(BundleError, match=r"many.safetensors: metadata field 'tensor_layout' has"):
        read_bundle(path)


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1" + "0" * 5000])
def test_a_number_out_of_range_is_a_bundle_error_naming_the_file(tmp_path, number):
    path = _craft(tmp_path / "huge.safetensors", _document()[:-1] + f', "density": {number}}}')
    with pytest.raises(BundleError, match=r"huge.safetensors: .*(out of range|digits)"):
        read_bundle(path)


def test_with_trusted_keys_the_signature_is_checked_before_the_body_is_read(tmp_path, monkeypatch):
    path = tmp_path / "unsigned.safetensors"
    write_bundle(path, _bundle())

    def never(*args, **kwargs):
        raise AssertionError("the body was parsed before the signature was checked")

    monkeypatch.setattr(safetensors.torch, "load", never)
    trusted = trusted_key_set(generate_private_key().public_key())
    with pytest.raises(BundleError, match="is not signed, and trusted keys are required"):
        read_bundle(path, check=lambda bundle: verify_bundle(bundle, trusted))


def test_signed_bundle_passes_the_early_check_and_reads_whole(tmp_path):
    key = generate_private_key()
    path = tmp_path / "t1.safetensors"
    write_bundle(path, _bundle(), sign=signer(key))
    trusted = trusted_key_set(key.public_key())
    bundle = read_bundle(path, check=lambda b: verify_bundle(b, trusted, task="t1"))
    assert bundle.tensors["x"].shape == (2, 3)


def test_cli_names_the_file_for_a_hostile_header(tmp_path, capsys):
    path = _craft(tmp_path / "deep.safetensors", "[" * 100_000 + "]" * 100_000)
    assert main(["bundle", "info", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("spa: error: ") and "deep.safetensors" in err and "nested" in err
