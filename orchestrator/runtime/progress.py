"""Progress lines with a rate and an estimated time left, for stages that run for hours.

One line at most every ``every_s`` seconds and one at the end, through the stage's ``log``
callable, e.g.::

    [augment] sst2: 410,000/1,346,980 texts (30%), 2,050/s, about 7m40s left

Work found done by an earlier call (resumed) counts as done; the rate, and so the time left,
comes from this call's own work only.
"""
from __future__ import annotations

import time
from typing import Callable


def duration(seconds: float) -> str:
    """``7m40s``, ``2h05m``, ``45s``: short, for log lines."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class StageProgress:
    """Counts work toward ``total`` and logs progress lines.

    ``stage``, ``task``: the line's prefix (``[stage] task:``); ``unit``: what is counted
    (``texts``); ``done``: work already complete when the call began (resumed), counted as done
    but not in the rate; ``log``: where lines go (None: nowhere); ``every_s``: least seconds
    between two lines before the end; ``clock``: a monotonic clock (tests pass their own)."""

    def __init__(self, stage: str, task: str, total: int, *, unit: str = "texts",
                 done: int = 0, log: Callable[[str], None] | None = None,
                 every_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.stage, self.task, self.unit = stage, task, unit
        self.total, self.resumed, self.done_now = int(total), int(done), 0
        self.log, self.every_s, self.clock = log, float(every_s), clock
        self.t0 = self.last = clock()

    @property
    def done(self) -> int:
        return self.resumed + self.done_now

    def rate(self) -> float | None:
        """Units per second of this call's work; None before any."""
        elapsed = self.clock() - self.t0
        return self.done_now / elapsed if self.done_now and elapsed > 0 else None

    def line(self, final: bool = False) -> str:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        head = (f"[{self.stage}] {self.task}: {self.done:,}/{self.total:,} {self.unit} "
                f"({pct:.0f}%)")
        rate = self.rate()
        speed = f", {rate:,.0f}/s" if rate is not None else ""
        if final:
            tail = f", done in {duration(self.clock() - self.t0)} in this call"
        elif rate is None:
            tail = ", rate not known yet"
        else:
            tail = f", about {duration((self.total - self.done) / rate)} left"
        resumed = f" ({self.resumed:,} done by earlier calls)" if self.resumed else ""
        return head + speed + tail + resumed

    def update(self, n: int) -> None:
        """Add ``n`` units done by this call; log a line when ``every_s`` has passed."""
        self.done_now += int(n)
        now = self.clock()
        if self.log is not None and now - self.last >= self.every_s:
            self.last = now
            self.log(self.line())

    def finish(self) -> None:
        """Log the closing line (also when nothing was left to do)."""
        if self.log is not None:
            self.log(self.line(final=True))
