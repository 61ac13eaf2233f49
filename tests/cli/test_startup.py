"""`spa --help` and argument errors never import torch (the 4-8 s every CLI call used to pay);
the time itself is measured by benchmarks/bench_startup.py, not here."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
from spa.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "transformers", "numpy", "safetensors") if m in sys.modules)
print(heavy)
"""


def _heavy_modules(argv: list[str]) -> str:
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, timeout=60
    )
    return result.stdout.strip().splitlines()[-1]


def test_help_and_argument_errors_import_no_heavy_module():
    for argv in (["--help"], ["bundle", "--help"], ["nonsense"], ["export"], ["--version"]):
        assert _heavy_modules(argv) == "[]", argv


def test_the_public_api_still_resolves_lazily():
    import spa

    assert spa.adapt.__module__ == "spa.adapters.inject"
    assert spa.tasks.load_task is spa.load_task  # subpackages resolve as attributes too
    assert set(spa.__all__) <= set(dir(spa))
