"""Allocator settings of `spa serve` (glibc `mallopt`): validation and their effect on RSS."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spa.errors import ConfigError
from spa.serve.memory import AllocatorSettings

_ROOT = Path(__file__).resolve().parents[2]

# Frees a 16 MiB tensor (glibc then raises its mmap threshold to 16 MiB), then allocates,
# touches and frees 8 MiB: prints the MiB still resident afterwards.
_PROBE = """
import sys, torch
from spa.serve.memory import AllocatorSettings, configure_allocator
def rss():
    line = next(l for l in open('/proc/self/status') if l.startswith('VmRSS'))
    return int(line.split()[1]) / 1024
if sys.argv[1] != 'default':
    assert configure_allocator(AllocatorSettings(mmap_threshold=int(sys.argv[1]), arena_max=None))
x = torch.ones(4 * 2**20); del x
before = rss()
y = torch.ones(2 * 2**20); del y
print(rss() - before)
"""


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"mmap_threshold": -1}, "mmap threshold must be within"),
        ({"mmap_threshold": 64 * 2**20}, "mmap threshold must be within"),
        ({"arena_max": 0}, "arena max must be >= 1"),
    ],
)
def test_allocator_settings_refuse_values_glibc_does_not_take(options, words):
    with pytest.raises(ConfigError, match=words):
        AllocatorSettings(**options)


def _retained_mib(threshold: str) -> float:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, threshold],
        env={**os.environ, "PYTHONPATH": str(_ROOT), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return float(result.stdout)


@pytest.mark.slow  # two fresh interpreters importing torch
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux /proc")
def test_a_fixed_mmap_threshold_returns_freed_tensors_to_the_system():
    from spa.serve.memory import _glibc

    if _glibc() is None:
        pytest.skip("not glibc")
    assert _retained_mib("default") > 6  # the raised threshold keeps 8 MiB on the heap
    assert _retained_mib(str(256 * 2**10)) < 2  # mapped on its own and unmapped when freed
