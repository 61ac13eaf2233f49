"""`spa._files.write_atomic`: whole content or nothing, with bytes or a writing function."""

from __future__ import annotations

import os

import pytest
import safetensors.torch
import torch

from spa._files import umask, write_atomic


def test_a_writing_function_fills_the_file_with_open_s_mode(tmp_path):
    path = tmp_path / "t.safetensors"
    tensors = {"x": torch.arange(6.0).reshape(2, 3)}
    write_atomic(path, lambda temporary: safetensors.torch.save_file(tensors, temporary))
    assert path.read_bytes() == safetensors.torch.save(tensors)  # what bytes would have written
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask()
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]


@pytest.mark.parametrize("fails_after_writing", [False, True])
def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path, fails_after_writing):
    path = tmp_path / "t.bin"
    path.write_bytes(b"old")

    def write(temporary: str) -> None:
        if fails_after_writing:
            with open(temporary, "wb") as file:
                file.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, write)
    assert path.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["t.bin"]
