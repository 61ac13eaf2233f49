"""`spa export -o`, `spa bundle sign -o` and `spa bundle keygen` replace nothing unasked, and
never their own inputs; every file spa writes gets the one permission rule (the umask)."""

from __future__ import annotations

import os
import stat

import pytest

from spa.cli import main
from spa.experiments.files import atomic_write_text
from spa.tasks import read_bundle
from spa.tasks.format import write_bundle
from tests.cli.test_bundle_cli import MODEL_ARGS, files  # noqa: F401  (fixture)


def _export(bundle, base, output, *extra):
    return main(
        ["export", str(bundle), "--base", str(base), *MODEL_ARGS, "-o", str(output), *extra]
    )


def test_export_refuses_an_existing_file_unless_overwrite(files, tmp_path, capsys):  # noqa: F811
    _, _, base_path, bundle_path = files
    unrelated = tmp_path / "notes.txt"
    unrelated.write_text("keep me")
    assert _export(bundle_path, base_path, unrelated) == 1
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert unrelated.read_text() == "keep me"
    assert _export(bundle_path, base_path, unrelated, "--overwrite") == 0
    assert unrelated.read_bytes()[:8] != b"keep me"


@pytest.mark.parametrize("role", ["bundle", "base", "base (hard link)"])
def test_export_never_replaces_its_inputs_even_with_overwrite(files, tmp_path, capsys, role):  # noqa: F811
    _, _, base_path, bundle_path = files
    target = bundle_path if role == "bundle" else base_path
    if role == "base (hard link)":
        os.link(base_path, tmp_path / "alias.safetensors")
        target = tmp_path / "alias.safetensors"
    before = base_path.read_bytes(), bundle_path.read_bytes()
    assert _export(bundle_path, base_path, target, "--overwrite") == 1
    assert f"would replace the {role.split()[0]}" in capsys.readouterr().err
    assert (base_path.read_bytes(), bundle_path.read_bytes()) == before


def test_sign_output_refuses_an_existing_file_and_never_the_input(files, tmp_path, capsys):  # noqa: F811
    _, _, _, bundle_path = files
    key = tmp_path / "k.pem"
    assert main(["bundle", "keygen", str(key)]) == 0
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"other")
    sign = ["bundle", "sign", str(bundle_path), "--key", str(key), "-o"]
    assert main([*sign, str(other)]) == 1 and other.read_bytes() == b"other"
    before = bundle_path.read_bytes()
    assert main([*sign, str(bundle_path), "--overwrite"]) == 1
    assert "would replace the bundle" in capsys.readouterr().err
    assert bundle_path.read_bytes() == before
    assert main([*sign, str(other), "--overwrite"]) == 0
    assert read_bundle(other).signature is not None and read_bundle(bundle_path).signature is None


def test_keygen_never_overwrites_an_existing_public_key(tmp_path, capsys):
    key = tmp_path / "signer.pem"
    public = tmp_path / "signer.pem.pub"
    public.write_text("someone else's key")
    assert main(["bundle", "keygen", str(key)]) == 1
    assert "signer.pem.pub exists" in capsys.readouterr().err
    assert public.read_text() == "someone else's key" and not key.exists()
    assert main(["bundle", "keygen", str(key), "--force"]) == 0
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_tables_and_bundles_get_the_same_mode_from_the_umask(files, tmp_path, mask):  # noqa: F811
    previous = os.umask(mask)
    try:
        atomic_write_text(tmp_path / "table.md", "| a |\n")
        write_bundle(tmp_path / "copy.safetensors", read_bundle(files[3]))
    finally:
        os.umask(previous)
    expected = 0o666 & ~mask  # what open() gives a new file
    for name in ("table.md", "copy.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name
