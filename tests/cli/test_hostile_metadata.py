"""A bundle whose metadata holds null or a string where a number belongs is refused by name."""

from __future__ import annotations

import pytest

from spa.cli import main
from spa.tasks import read_bundle
from spa.tasks.format import write_bundle
from tests.cli.test_bundle_cli import files  # noqa: F401  (fixture)


@pytest.mark.parametrize(("field", "value"), [("density", None), ("dparams", "12")])
def test_bundle_info_names_the_file_and_field(files, tmp_path, capsys, field, value):  # noqa: F811
    bundle = read_bundle(files[3])
    bundle.metadata[field] = value
    for key in ("tensor_layout", "checksum"):  # resealed, as a hostile sender would
        bundle.metadata.pop(key)
    hostile = tmp_path / "hostile.safetensors"
    write_bundle(hostile, bundle)
    assert main(["bundle", "info", str(hostile)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("spa: error: ") and "hostile.safetensors" in err and field in err
