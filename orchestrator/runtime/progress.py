"""Progress lines with a rate and an estimated time left, for stages that run for hours.

One line at most every ``every_s`` seconds and one at the end, through the stage's ``log``
callable, e.g.::

    [augment] sst2: 410,000/1,346,980 texts (30%), 2,050/s, about 7m40s left

Work found done by an earlier call (resumed) counts as done; the rate, and so the time left,
comes from this call's own work only.

On a terminal a stage may draw a tqdm bar instead of the periodic lines (``bar=True``); in a
log file (stderr not a terminal) it never does: a bar there is a stream of carriage-return
frames, about 100 KB for one teacher fine-tune. Either way the closing line is logged.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, TextIO


def on_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: ``sys.stderr``, where tqdm draws) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def duration(seconds: float) -> str:
    """``7m40s``, ``2h05m``, ``45s``: short, for log lines."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def quiet_library_bars() -> None:
    """Off a terminal, turn off the tqdm bars of libraries (transformers' "Loading weights" of
    each model, the hub's downloads, MLflow's artifact downloads): here through transformers'
    switch and MLflow's variable, in the processes started from here (Ray workers) through
    ``TQDM_DISABLE`` and ``HF_HUB_DISABLE_PROGRESS_BARS``, which tqdm and the hub read when
    imported. A user's own TQDM_DISABLE wins. Also off a terminal: the ``(_trial pid=...)``
    prefix Ray puts before a worker's lines without its colour codes (``RAY_COLOR_PREFIX=0``,
    read as each line is printed), which a file keeps as escape sequences."""
    if on_terminal():
        return
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    os.environ.setdefault("TQDM_DISABLE", "1")
    if os.environ["TQDM_DISABLE"].strip().lower() in ("", "0", "false", "no"):
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # read at each download
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a declared dependency
        return
    hf_logging.disable_progress_bar()


def _rate(per_s: float) -> str:
    """``2,050``, ``12``, ``2.5``, ``0.42``: whole units from 10 a second, two significant
    digits below (a teacher fine-tune on a CPU runs a few steps a second, or fewer)."""
    return f"{per_s:,.0f}" if per_s >= 9.5 else f"{per_s:.2g}"


class StageProgress:
    """Counts work toward ``total`` and logs progress lines.

    ``stage``, ``task``: the line's prefix (``[stage] task:``); ``unit``: what is counted
    (``texts``); ``done``: work already complete when the call began (resumed), counted as done
    but not in the rate; ``log``: where lines go (None: nowhere); ``every_s``: least seconds
    between two lines before the end; ``clock``: a monotonic clock (tests pass their own);
    ``bar``: draw a tqdm bar on ``stream`` in place of the periodic lines, when ``stream``
    (default: ``sys.stderr``) is a terminal."""

    def __init__(self, stage: str, task: str, total: int, *, unit: str = "texts",
                 done: int = 0, log: Callable[[str], None] | None = None,
                 every_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 bar: bool = False, stream: TextIO | None = None):
        self.stage, self.task, self.unit = stage, task, unit
        self.total, self.resumed, self.done_now = int(total), int(done), 0
        self.log, self.every_s, self.clock = log, float(every_s), clock
        self.t0 = self.last = clock()
        self.note = ""  # the latest update's note (a loss), shown in lines and on the bar
        self.bar = None
        if bar and on_terminal(stream):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=self.resumed, unit=unit.rstrip("s") or unit,
                            desc=f"[{stage}] {task}", file=stream, leave=False,
                            disable=False)  # asked for, on a terminal: TQDM_DISABLE aside

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
        speed = f", {_rate(rate)}/s" if rate is not None else ""
        if final:
            tail = f", done in {duration(self.clock() - self.t0)} in this call"
        elif rate is None:
            tail = ", rate not known yet"
        else:
            tail = f", about {duration((self.total - self.done) / rate)} left"
        resumed = f" ({self.resumed:,} done by earlier calls)" if self.resumed else ""
        note = f"; {self.note}" if self.note and not final else ""
        return head + speed + tail + resumed + note

    def update(self, n: int, note: str | None = None) -> None:
        """Add ``n`` units done by this call (``note``: shown with the progress, e.g. the
        loss); log a line when ``every_s`` has passed, or move the bar on a terminal."""
        self.done_now += int(n)
        if note is not None:
            self.note = note
        if self.bar is not None:
            self.bar.update(int(n))
            if note is not None:
                self.bar.set_postfix_str(note, refresh=False)
            return
        now = self.clock()
        if self.log is not None and now - self.last >= self.every_s:
            self.last = now
            self.log(self.line())

    def close(self) -> None:
        """Take the bar off the terminal, if there is one; log nothing."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def finish(self) -> None:
        """Close the bar and log the closing line (also when nothing was left to do)."""
        self.close()
        if self.log is not None:
            self.log(self.line(final=True))
