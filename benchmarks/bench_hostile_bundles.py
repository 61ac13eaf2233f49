"""Cost of refusing hostile bundle files: seconds and peak Python memory per file.

Crafted like the attacks of issue 24: a header of 10^6 empty tensors (30 MB), a header that
repeats the layer list (48 MB), JSON nested 10^5 deep, a header just under the size limit filled
with values, the largest legal tensor layout (just under `MAX_ENTRIES` empty tensors, checksum
resealed), and a 64 MB unsigned file read with trusted keys. Each file is loaded with
`load_task` (the legal layout also read with `read_bundle` alone, which accepts it), in
interleaved rounds; the goal is every refusal, and that read, under 1 s and 100 MB. Memory is
the `tracemalloc` peak (Python allocations, which include the bytes read from the file).

Run: `PYTHONPATH=. python benchmarks/bench_hostile_bundles.py [--rounds 9]`.
"""

from __future__ import annotations

import argparse
import json
import struct
import tempfile
import time
import tracemalloc
from pathlib import Path

import torch
from _timing import report_goal

from spa.errors import SpaError
from spa.tasks import limits, load_task, read_bundle
from spa.tasks.format import FORMAT_NAME, FORMAT_VERSION, Bundle, write_bundle
from spa.tasks.signing import generate_private_key


def _raw(path: Path, document: str, body: bytes = b"") -> Path:
    header = json.dumps({"__metadata__": {"spa_bundle": document}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + body)
    return path


def _document(**fields) -> dict:
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **fields}


def _files(folder: Path) -> dict[str, Path]:
    empty = [[f"t{i:07d}", "float32", [0]] for i in range(1_000_000)]
    layer = {"path": "layer", "kind": "splora", "shape": [8, 8], "base_shape": [8, 8]}
    under = [[f"t{i:06d}", "float32", [0]] for i in range(limits.MAX_ENTRIES - 1)]
    legal = Bundle(_document(), {name: torch.zeros(0) for name, _, _ in under})
    write_bundle(folder / "legal_layout.safetensors", legal)
    fill = "[" + "1," * (limits.MAX_JSON_VALUES - 10) + "1]"
    return {
        "1e6 empty tensors": _raw(folder / "a", json.dumps(_document(tensor_layout=empty))),
        "repeated layer list": _raw(folder / "b", json.dumps(_document(layers=[layer] * 600_000))),
        "nested 1e5 deep": _raw(folder / "c", "[" * 100_000 + "]" * 100_000),
        "values at the limit": _raw(folder / "d", json.dumps(_document(filler=json.loads(fill)))),
        "largest legal layout": folder / "legal_layout.safetensors",
        "read: largest legal layout": folder / "legal_layout.safetensors",
        "64 MB unsigned, trusted keys": _raw(
            folder / "e", json.dumps(_document()), body=b"\0" * (64 << 20)
        ),
    }


def _refuse(name: str, path: Path, trusted: list) -> str:
    """Load `path` as `load_task` does (the read only, for the legal layout); the reason."""
    try:
        if name.startswith("read:"):
            read_bundle(path)
            return "read (a legal header: the most a header may cost)"
        load_task(torch.nn.Linear(2, 2), path, trusted_keys=trusted if "trusted" in name else None)
    except SpaError as error:
        return str(error).split(": ", 1)[1][:60]
    raise AssertionError(f"{path} was accepted")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    trusted = [generate_private_key().public_key()]
    with tempfile.TemporaryDirectory() as work:
        files = _files(Path(work))
        sizes = {name: path.stat().st_size for name, path in files.items()}
        times: dict[str, list[float]] = {name: [] for name in files}
        peaks: dict[str, int] = dict.fromkeys(files, 0)
        reasons = {}
        for _ in range(args.rounds):  # interleaved: every file once per round
            for name, path in files.items():
                start = time.perf_counter()
                reasons[name] = _refuse(name, path, trusted)
                times[name].append(time.perf_counter() - start)
        for name, path in files.items():  # memory in a round of its own (tracemalloc is slow)
            tracemalloc.start()
            _refuse(name, path, trusted)
            peaks[name] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    print(f"{'file':<30} {'size':>10} {'median s':>9} {'min-max s':>14} {'peak MB':>8}  reason")
    ok = True
    for name, samples in times.items():
        samples.sort()
        median, peak = samples[len(samples) // 2], peaks[name] / 2**20
        size = sizes[name]
        print(
            f"{name:<30} {size / 2**20:>8.1f}MB {median:>9.3f} "
            f"{samples[0]:>6.3f}-{samples[-1]:<7.3f} {peak:>8.1f}  {reasons[name]}"
        )
        met = samples[-1] < 1.0 and peak < 100
        ok &= met
        report_goal(
            f"refuse hostile bundle: {name}",
            "< 1 s, < 100 MB",
            f"{median:.3f} s ({samples[0]:.3f}-{samples[-1]:.3f}), {peak:.0f} MB",
            met,
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
