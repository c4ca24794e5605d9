"""A search's progress in a log file: a line when a trial starts, a line when it ends, and a line
on the whole search at most every 30 s, in place of Tune's tables.

On a terminal Tune redraws its trial table every 30 s and boxes each trial's config and result;
written to a file (``make demo 2>&1 | tee demo.log``, a Ray job's log) every copy stays, and they
were most of a demo's log. Off a terminal the search runs Tune silent (``verbose=0``) with
:class:`TrialLines` as a callback, which writes::

    [trial] 1c8eeb69 started (1 of 4): train.lr=0.00134, student.hidden_size=150, ...
    [trial] 1c8eeb69 finished at report 3/3: dev_score 0.8222 (best 0.8222), latency_ms 6.87, 6m45s
    [trial] 506a01b3 stopped at rung 1 (report 1/3): dev_score 0.7844 (best 0.7844), ..., 1m44s
    [trial] 9f00aa01 error at report 2/3: RuntimeError: ... (error file: .../error.txt)
    [search] 2 of 4 trials ended (1 stopped early), 1 running, 1 to start; best dev_score ...

A trial that starts again (a retry after a failure, a resume after a pause at a rung) gets a
``restarted`` line, never a second ``started`` one. The trials' own report lines (``[train]
report 2/3 ...``) carry the progress within a trial.

Tune pickles its callbacks with its state (``tuner.pkl``): a killed search's restore needs this
class at this module path.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

from ray.tune import Callback

from orchestrator.runtime.progress import duration

# what a trial reports that counts its reports (orchestrator.training.train.REPORT), and what
# a trial replayed from its finished MLflow run reports (search._replay_finished)
REPORT = "report"
REPLAYED = "replayed_from_mlflow"


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def sample_text(config: dict[str, Any]) -> str:
    """A trial's sampled values on one line: ``train.lr=0.00134, student.hidden_size=150``."""
    return ", ".join(f"{str(k).rstrip('#')}={_value(v)}" for k, v in (config or {}).items())


class TrialLines(Callback):
    """Tune callback writing one line per trial start and end and a periodic search line.

    ``metric``, ``mode``: the search's score and its direction; ``total_reports``: the reports
    a trial makes when it runs to the end; ``rungs``: the reports at which early stopping judges
    a trial (ASHA's rungs; empty without early stopping); ``every_s``: least seconds between two
    search lines; ``quiet_s``: with no trial event since the last one, a search line only after
    this long; ``log``: where lines go; ``clock``: a monotonic clock (tests pass their own)."""

    def __init__(self, metric: str, mode: str, total_reports: int, rungs: list[int] = (), *,
                 every_s: float = 30.0, quiet_s: float = 300.0,
                 log: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic):
        self.metric, self.mode = metric, mode
        self.total_reports, self.rungs = int(total_reports), [int(r) for r in rungs]
        self.every_s, self.quiet_s = float(every_s), float(quiet_s)
        self.log, self.clock = log, clock
        self._reset(None)

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks into its saved state; the caller's log callable (a bound
        # method, a closure over anything) stays out of it: a restored search is given fresh
        # lines (search._restored_output), and an unpickled copy writes with print
        return {**self.__dict__, "log": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.log is None:
            self.log = print

    def _reset(self, samples: int | None) -> None:
        self.samples = samples
        self.t0 = self.last = self.clock()
        self.seen: set[str] = set()  # trials whose start was written
        self.told_to_stop: set[str] = set()  # trials whose last result the search stopped at
        self.stopped_early: set[str] = set()
        self.changed = False  # a trial reported or ended since the last search line

    # -- Tune's hooks ---------------------------------------------------------------------------

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info) -> None:
        self._reset(total_num_samples)

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        tid = str(trial.trial_id)
        if tid in self.seen:
            self.log(f"[trial] {tid} restarted{self._at(trial.last_result)}")
            return
        self.seen.add(tid)
        of = f" of {self.samples}" if self._finite_samples() else ""
        number = next((i for i, t in enumerate(trials, 1) if t is trial), len(trials))
        self.log(f"[trial] {tid} started ({number}{of}): {sample_text(trial.config)}")

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self.changed = True
        if result.get("done"):  # Tune marks a result done when the scheduler stops its trial
            self.told_to_stop.add(str(trial.trial_id))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self.changed = True
        result = trial.last_result or {}
        tid = str(trial.trial_id)
        # stopped from outside: at a report (above), or while it waited at a rung or to start;
        # a trial that returned by itself ends RUNNING with no result marked done (Tune marks
        # a copy of its last one instead, without calling back)
        stopped = tid in self.told_to_stop or str(trial.status) in ("PAUSED", "PENDING")
        how = self.ending(result, stopped)
        if how.startswith("stopped"):
            self.stopped_early.add(tid)
        self.log(f"[trial] {tid} {how}: {self._scores(result)}")

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        self.changed = True
        failures = getattr(trial, "num_failures", 0)
        limit = getattr(trial, "max_failures", 0)
        retry = (f"retrying (failure {failures} of {limit} allowed)" if limit and limit > 0
                 else "retrying")
        self.log(f"[trial] {trial.trial_id} failed{self._at(trial.last_result)}: "
                 f"{error_text(trial)}; {retry}")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.changed = True
        where = getattr(trial, "error_file", None)
        self.log(f"[trial] {trial.trial_id} error{self._at(trial.last_result)}: "
                 f"{error_text(trial)}" + (f" (error file: {where})" if where else ""))

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        now = self.clock()
        since = now - self.last
        if since >= self.every_s and (self.changed or since >= self.quiet_s):
            self.log(self.search_line(trials))
            self.last, self.changed = now, False

    def on_experiment_end(self, trials: list, **info) -> None:
        self.log(self.search_line(trials))

    # -- the lines ------------------------------------------------------------------------------

    def ending(self, result: dict, stopped: bool) -> str:
        """How a trial ended, from its last result and whether the search ``stopped`` it:
        ``finished at report 3/3``, ``stopped at rung 1 (report 1/3)`` (early stopping),
        ``finished early at report 2/3 (patience)`` (it returned by itself before its last
        report), ``finished (its MLflow run's outcome ...)`` (replayed on a resume)."""
        if result.get(REPLAYED):
            return "finished (its MLflow run's outcome, from before the resume)"
        report = result.get(REPORT)
        if report is None:
            return "stopped before its first report" if stopped else "ended before its first report"
        report = int(report)
        at = f"report {report}/{self.total_reports}"
        if report >= self.total_reports:
            return f"finished at {at}"
        if not stopped:
            return f"finished early at {at} (patience)"
        if report in self.rungs:
            return f"stopped at rung {self.rungs.index(report) + 1} ({at})"
        return f"stopped at {at}"

    def _at(self, result: dict | None) -> str:
        report = (result or {}).get(REPORT)
        return "" if report is None else f" at report {int(report)}/{self.total_reports}"

    def _scores(self, result: dict) -> str:
        parts = []
        score, best = result.get(self.metric), result.get(f"best_{self.metric}")
        if score is not None:
            parts.append(f"{self.metric} {score:.4f}" + (f" (best {best:.4f})" if best is not None
                                                         else ""))
        if result.get("latency_ms") is not None and self.metric != "latency_ms":
            parts.append(f"latency_ms {result['latency_ms']:.3g}")
        if result.get("time_total_s") is not None:
            parts.append(duration(result["time_total_s"]))
        return ", ".join(parts) or "no metrics"

    def _finite_samples(self) -> bool:
        return self.samples is not None and 0 < self.samples < 2 ** 31

    def best(self, trials: list) -> tuple[str, float] | None:
        """The best trial so far by its running best score: (trial id, score)."""
        sign = 1.0 if self.mode == "max" else -1.0
        found = None
        for t in trials:
            r = t.last_result or {}
            v = r.get(f"best_{self.metric}", r.get(self.metric))
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            if found is None or sign * v > sign * found[1]:
                found = (str(t.trial_id), float(v))
        return found

    def search_line(self, trials: list) -> str:
        status = [str(t.status) for t in trials]
        ended = status.count("TERMINATED") + status.count("ERROR")
        running = status.count("RUNNING")
        waiting = status.count("PENDING") + status.count("PAUSED")
        total = self.samples if self._finite_samples() else len(trials)
        to_start = max(0, total - len(trials)) + waiting
        notes = [f"{len(self.stopped_early)} stopped early"] if self.stopped_early else []
        if status.count("ERROR"):
            notes.append(f"{status.count('ERROR')} failed")
        head = (f"[search] {ended} of {total} trials ended"
                + (f" ({', '.join(notes)})" if notes else "")
                + f", {running} running, {to_start} to start")
        best = self.best(trials)
        best_s = (f"best {self.metric} {best[1]:.4f} (trial {best[0]})" if best
                  else f"no {self.metric} yet")
        return f"{head}; {best_s}; {duration(self.clock() - self.t0)}"


def error_text(trial) -> str:
    """The last line of a trial's error (``RuntimeError: boom``), at most 200 characters."""
    try:
        text = trial.get_error()
    except Exception:  # noqa: BLE001 - an unreadable error file: say so, don't fail the search
        text = None
    lines = [ln.strip() for ln in str(text or "").splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "no error text"
