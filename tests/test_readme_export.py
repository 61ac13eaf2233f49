"""The README's `--format transformers` export runs as pasted, after the example before it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_export_command_runs_after_the_save_pretrained_example(tmp_path, monkeypatch):
    section = README.read_text().split("### Saving in the `transformers` format\n", 1)[1]
    python = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)
    bash = re.search(r"```bash\n(.*?)```", section, flags=re.DOTALL).group(1).strip()
    monkeypatch.chdir(tmp_path)
    exec(compile(python, "README.md:save_pretrained", "exec"), {})
    assert bash.startswith("spa export ")
    command = [sys.executable, "-m", "spa", *bash.split()[1:]]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "my-llama-pruned" / "config.json").read_text())
    assert (config["num_attention_heads"], config["intermediate_size"]) == (2, 32)
