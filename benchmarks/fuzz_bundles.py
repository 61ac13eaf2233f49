"""Fuzz task bundles: seeded file corruption and hostile metadata edits with resealed checksums.

Builds five tiny task bundles (SPLoRA with masks, fine-pruning with folded norms, a compacted
MLP with unsorted kept indices, shared-bank SPLoPA, a residual net compacted through its pruning
groups), applies N seeded mutations round-robin over the mutation kinds of
`tests/tasks/bundle_mutations.py`, loads each result onto its base and prints, per kind, how many
were refused (a `SpaError`), loaded identically (bit-identical outputs), loaded silently wrong
(other outputs) or crashed (a non-spa exception, or a loaded model whose forward fails).

Run from the repository root (the mutations live with the tests):
`PYTHONPATH=. python benchmarks/fuzz_bundles.py [--count 10000] [--seed 0]`.
Exit status 1 if any mutation was silently wrong or crashed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from tests.tasks.bundle_fuzz import OUTCOMES, run, subjects


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="number of mutations")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as work:
        start = time.perf_counter()
        counts, findings = run(subjects(Path(work)), args.count, args.seed)
        elapsed = time.perf_counter() - start
    width = max(map(len, counts))
    print(f"{'mutation':<{width}} " + " ".join(f"{o:>16}" for o in OUTCOMES))
    for kind, outcomes in counts.items():
        print(f"{kind:<{width}} " + " ".join(f"{outcomes[o]:>16}" for o in OUTCOMES))
    totals = {o: sum(c[o] for c in counts.values()) for o in OUTCOMES}
    print(f"{'total':<{width}} " + " ".join(f"{totals[o]:>16}" for o in OUTCOMES))
    print(f"{sum(totals.values())} mutations, seed {args.seed}, {elapsed:.1f} s")
    for kind, subject, outcome, detail in findings[:20]:
        print(f"FINDING {kind} (subject {subject}): {outcome}: {detail}")
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
