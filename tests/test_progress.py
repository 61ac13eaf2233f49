"""Off a terminal, long loops log their stage, progress and ETA at least every 30 s."""

from __future__ import annotations

import io
import logging

import pytest

from spa.progress import INTERVAL_S, LoggedProgress, progress


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _fresh_process_state(monkeypatch):
    monkeypatch.setattr(LoggedProgress, "running", [])
    monkeypatch.setattr(LoggedProgress, "last_line", None)


def test_lines_every_interval_with_stage_progress_and_eta(caplog):
    clock = _Clock()
    loop = LoggedProgress(range(12), 12, "train epoch 1", clock=clock)
    with caplog.at_level(logging.INFO, logger="spa.progress"):
        for _ in loop:
            clock.now += 10.0  # each step takes 10 s: a line every third step
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 12 * 10 // INTERVAL_S == 4
    # After 3 steps of 10 s, 9 steps are left: 90 s at the same pace.
    assert lines[0] == "train epoch 1: 3/12 (25%), 30 s elapsed, ETA 1 min 30 s"
    assert lines[-1].startswith("train epoch 1: 12/12 (100%), 2 min 00 s elapsed, ETA 0 s")


def test_short_inner_loops_still_log_every_interval_with_the_outer_stage(caplog):
    clock = _Clock()
    with caplog.at_level(logging.INFO, logger="spa.progress"):
        for _ in LoggedProgress(range(4), 4, "demo runs", clock=clock):
            for _ in range(3):  # epochs of 5 steps of 1 s: each loop is far shorter than 30 s
                for _ in LoggedProgress(range(5), 5, "train epoch", clock=clock):
                    clock.now += 1.0
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 4 * 3 * 5 // INTERVAL_S == 2
    # 30 s in: the last epoch of the second run just ended; the outer loop counts 1 run done.
    assert lines[0] == (
        "demo runs: 1/4 (25%), 30 s elapsed, ETA 1 min 30 s | "
        "train epoch: 5/5 (100%), 5 s elapsed, ETA 0 s"
    )


def test_a_step_longer_than_the_interval_still_gets_lines(caplog, monkeypatch):
    import time

    monkeypatch.setattr(LoggedProgress, "heartbeat", None)
    with caplog.at_level(logging.INFO, logger="spa.progress"):
        for _ in LoggedProgress(range(1), 1, "one long step", interval=0.1):
            time.sleep(0.6)  # no step ends for six intervals: the heartbeat logs meanwhile
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) >= 2 and all(line.startswith("one long step: 0/1") for line in lines)


def test_a_terminal_gets_the_bar_and_a_pipe_gets_lines():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    from tqdm import tqdm

    assert isinstance(progress(range(3), desc="x", stream=Terminal()), tqdm)
    assert isinstance(progress(range(3), desc="x", stream=io.StringIO()), LoggedProgress)
    assert progress(range(3), desc="x", stream=io.StringIO()).total == 3


def test_the_demo_and_training_loops_use_it():
    from pathlib import Path

    import spa

    root = Path(spa.__file__).parent
    for name in ("experiments/demo.py", "experiments/train.py", "experiments/lm_model.py"):
        text = (root / name).read_text()
        assert "show_progress(" in text and "tqdm(" not in text, name
