"""`[distill]` in a `spa run` config: the teacher takes part, and a resumed run keeps it."""

from __future__ import annotations

from pathlib import Path

import pytest

from spa.errors import ConfigError
from spa.experiments.config import from_dict
from spa.experiments.runner import run
from tests.experiments.test_runner import Interrupted, _comparable, _config


@pytest.mark.slow
def test_distilled_run_differs_and_resumes_with_its_teacher(tmp_path: Path) -> None:
    plain = run(from_dict(_config(tmp_path / "plain")), tmp_path / "plain")
    config = from_dict(_config(tmp_path, distill={"weight": 0.5, "temperature": 2.0}))
    reference = run(config, tmp_path / "reference")
    # Step 0 trains before the teacher exists (identical); the pruned steps follow it.
    assert _comparable(reference.records)[0] == _comparable(plain.records)[0]
    assert reference.records[-1]["loss"] != plain.records[-1]["loss"]

    def interrupt(seed: int, step: int, record: dict) -> None:
        if step == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        run(config, tmp_path / "resumed", step_hook=interrupt)
    resumed = run(config, tmp_path / "resumed")
    assert _comparable(resumed.records) == _comparable(reference.records)


def test_distill_section_is_validated_with_its_key() -> None:
    with pytest.raises(ConfigError, match="distill.weight"):
        from_dict(_config(Path("unused"), distill={"weight": 2.0}))
    with pytest.raises(ConfigError, match="distill.temperature"):
        from_dict(_config(Path("unused"), distill={"temperature": 0}))


@pytest.mark.slow
def test_rank_allocation_run_halves_the_adapter_and_resumes(tmp_path: Path) -> None:
    plain = run(from_dict(_config(tmp_path / "plain")), tmp_path / "plain")
    sections = {"ranks": {"budget": 0.5}, "distill": {"weight": 0.5}}
    config = from_dict(_config(tmp_path, **sections))
    reference = run(config, tmp_path / "reference")
    assert reference.records[0]["dparams"] == plain.records[0]["dparams"]  # before allocation
    assert reference.records[1]["dparams"] < plain.records[1]["dparams"]

    def interrupt(seed: int, step: int, record: dict) -> None:
        if step == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        run(config, tmp_path / "resumed", step_hook=interrupt)
    resumed = run(config, tmp_path / "resumed")
    assert _comparable(resumed.records) == _comparable(reference.records)
