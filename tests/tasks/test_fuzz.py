"""Seeded fuzz of task bundles (issue 13): file corruption and hostile, resealed metadata edits.

The bound: a mutated bundle is either refused with a `SpaError`, or it loads into a model that
runs and gives exactly the original task's outputs. A non-spa exception, a loaded model whose
forward fails, or a loaded model with other outputs is a finding.
"""

from __future__ import annotations

import pytest

from .bundle_fuzz import run, subjects
from .bundle_mutations import MUTATIONS


@pytest.fixture(scope="module")
def fuzz_subjects(tmp_path_factory):
    return subjects(tmp_path_factory.mktemp("fuzz"))


@pytest.mark.slow
def test_bundle_fuzz_only_refuses_or_loads_identically(fuzz_subjects):
    counts, findings = run(fuzz_subjects, count=1000, seed=13)
    assert findings == []
    assert sum(sum(outcomes.values()) for outcomes in counts.values()) == 1000
    for kind, outcomes in counts.items():
        assert outcomes["refused"] > 0, f"mutation {kind} was never refused: {outcomes}"


def test_bundle_fuzz_smoke_covers_every_mutation_kind(fuzz_subjects):
    counts, findings = run(fuzz_subjects, count=len(MUTATIONS) * 2, seed=1)
    assert findings == []
    assert set(counts) == set(MUTATIONS)
