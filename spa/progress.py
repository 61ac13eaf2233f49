"""Progress of long loops: a tqdm bar on a terminal, log lines elsewhere.

When output goes to a file or a pipe, tqdm switches its bar off and nothing would say what is
running. `progress` then logs, every `interval` seconds (30 by default) of the process, one line
with every running stage, outer first (the loops' descriptions), the steps done of each total
and an estimate of the time left, so a `make demo > log` shows a line at least every 30 s while
any loop runs, however short each inner loop is and however long one step takes (a heartbeat
thread logs the running stages when no step did for `interval` seconds). The stages running and
the time of the last line are shared by the loops of the process (the one piece of module state:
a log rate limit).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, TextIO

logger = logging.getLogger("spa.progress")

INTERVAL_S = 30.0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds // 60 % 60:02d} min"


class LoggedProgress:
    """An iterable wrapper that logs the running stages, progress and ETA every `interval` s."""

    running: ClassVar[list[LoggedProgress]] = []  # the loops being iterated, outer first
    last_line: ClassVar[float | None] = None  # when the process last logged a progress line
    heartbeat: ClassVar[threading.Thread | None] = None

    def __init__(
        self,
        iterable: Iterable | None,
        total: int | None,
        desc: str,
        interval: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.iterable, self.total, self.desc = iterable, total, desc
        self.interval, self.clock = interval, clock
        self.done = 0
        self.start = clock()
        if LoggedProgress.last_line is None:
            LoggedProgress.last_line = self.start

    def line(self) -> str:
        """The progress line: stage, steps done of the total, elapsed time and ETA."""
        elapsed = self.clock() - self.start
        if not self.total:
            return f"{self.desc}: {self.done} done, {_duration(elapsed)} elapsed"
        left = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
        eta = _duration(left) if self.done else "unknown"
        percent = 100 * self.done / self.total
        return (
            f"{self.desc}: {self.done}/{self.total} ({percent:.0f}%), {_duration(elapsed)} "
            f"elapsed, ETA {eta}"
        )

    def update(self, n: int = 1) -> None:
        """Count `n` more steps done, and log if `interval` seconds passed since the last line."""
        self.done += n
        stages = [p for p in LoggedProgress.running if p is not self] + [self]
        _log_if_due(stages, self.clock(), self.interval)

    def __iter__(self) -> Iterator[Any]:
        LoggedProgress.running.append(self)
        if self.clock is time.monotonic and LoggedProgress.heartbeat is None:
            beat = threading.Thread(target=_heartbeat, name="spa-progress", daemon=True)
            LoggedProgress.heartbeat = beat
            beat.start()
        try:
            for item in self.iterable or ():
                yield item
                self.update()
        finally:
            LoggedProgress.running.remove(self)

    def close(self) -> None:
        """Nothing to tear down (tqdm's interface)."""

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Ignored (tqdm's interface)."""


def _log_if_due(stages: list[LoggedProgress], now: float, interval: float) -> None:
    """Log the running stages if `interval` seconds passed since the process's last line."""
    last = LoggedProgress.last_line
    if stages and last is not None and now - last >= interval:
        LoggedProgress.last_line = now
        logger.info("%s", " | ".join(stage.line() for stage in stages))


def _heartbeat() -> None:
    """While loops run, log their stages when no step has for an interval (a long step)."""
    while LoggedProgress.running:
        stages = list(LoggedProgress.running)
        interval = stages[-1].interval if stages else INTERVAL_S
        time.sleep(min(1.0, interval / 4))
        _log_if_due(list(LoggedProgress.running), time.monotonic(), interval)
    LoggedProgress.heartbeat = None


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str,
    leave: bool = True,
    disable: bool = False,
    stream: TextIO | None = None,
) -> Any:
    """tqdm over `iterable` on a terminal; otherwise a `LoggedProgress` that logs every 30 s.

    Args:
        iterable: what to iterate (None: call `update` by hand).
        total: the number of steps, for the percentage and ETA (default: `len(iterable)`).
        desc: the stage, first in every line.
        leave: keep tqdm's finished bar on screen.
        disable: neither bar nor lines.
        stream: where tqdm would draw (default: stderr); a terminal gets the bar.
    """
    from tqdm.auto import tqdm

    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if disable:
        return tqdm(iterable, total=total, disable=True)
    if (stream or sys.stderr).isatty():
        return tqdm(iterable, total=total, desc=desc, leave=leave)
    return LoggedProgress(iterable, total, desc)
