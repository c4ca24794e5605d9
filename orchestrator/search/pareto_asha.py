"""Early stopping for a two-objective search: asynchronous successive halving that keeps the front.

Plain ASHA ranks the trials at each rung by one metric, so a two-objective search (dev score up,
student latency down) loses its small fast students to the large slow ones long before either has
converged. Here a trial reaching a rung goes on when either

- it is in the top 1 / reduction_factor of the trials recorded at that rung by score (ASHA's own
  rule, so every trial plain ASHA keeps is kept), or
- no trial recorded at that rung is at least as good on both objectives and better on one (it is on
  the rung's Pareto front) and its score beats ``floor``: the score of a trivial predictor (the
  training set's majority class), so a fast model at chance level is never kept for being fast.

The rule is ``keeps``, a pure function; ``ParetoASHA`` is the Ray Tune scheduler around it. Rungs
are counted in the scheduler's time attribute (the trial's own report count, which a resumed trial
carries on). Tune does not checkpoint its scheduler, so with ``state_path`` the rungs are written
there after every decision and read back when a restored search first uses them: a resumed search
judges its next trials against the ones before the interruption.

A synchronous first rung for a cohort. Asynchronous halving judges a trial only against the
trials that reached its rung before it, so the first trial of a search meets empty rungs and always
goes on: with one trial at a time it runs to its end whatever it is worth. With ``cohort=n`` the
first n trials (the searcher's random startup draws) meet the first rung together: a cohort trial
reaching it pauses there (Tune's PAUSE; its result carries ``PARKED``, so ``CohortLimiter`` frees
its slot for the next draw) until every cohort trial has reached the rung or ended; then each is
judged by the same rule against all the others, and the ones kept run on (a paused trial resumes
its Ray Train run from the checkpoint of its last report: one restart each) while the rest stop.
The rungs above, and every later trial, are judged asynchronously against every point recorded
(pausing there too would cost a restart per kept trial per rung for a smaller gain: the first
rung's survivors are already the top third and the front).

A restored search and the trials Tune lost. Tune snapshots its trials every few seconds, the
rungs here are written at every decision, so a driver killed between the two leaves rungs that
name a trial Tune never recorded. The restored Tune does not know it, and its searcher (restored
from the same snapshot) draws that slot again: left in the rungs it would be a ghost, judged
against in every later decision, and the search would count num_samples + 1 trials. Such a trial
is removed from every rung and waiting list, not adopted: adopting it would need a Tune trial
the restored searcher never suggested (its result could not reach the searcher's model, and the
slot would be drawn a second time), whereas removal keeps Tune, the searcher, the rungs and
MLflow agreeing on the same num_samples trials; what is lost is the work the trial did since
the snapshot. Every trial added is saved (``added``): on restore, Tune first adds back every
trial of its snapshot, in one batch before anything else; the saved ones that did not come back
by the first call of any other kind are the lost ones (``lost`` in the saved state).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

import fsspec
import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers.trial_scheduler import FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter

from orchestrator.runtime import faults
from orchestrator.runtime.keys import write_bytes_atomic

logger = logging.getLogger(__name__)

Point = tuple[float, float]  # (score, cost), both oriented: higher score, lower cost is better
PARKED = "waiting_at_rung"  # put in a result the scheduler pauses its trial on: the rung


def rung_milestones(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """grace, grace*rf, grace*rf^2, ... below max_t (ASHA's rungs)."""
    out, m = [], float(grace_period)
    while m < max_t:
        out.append(int(round(m)))
        m *= reduction_factor
    return out


def dominates(a: Point, b: Point) -> bool:
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def keeps(point: Point, recorded: list[Point], reduction_factor: float,
          floor: float = -math.inf) -> bool:
    """Whether a trial at ``point`` goes on past a rung where ``recorded`` (the trials that reached
    it before, not this one) stand. The first trial at a rung always goes on."""
    if not recorded or math.isnan(point[0]):
        return True
    cutoff = np.nanpercentile([s for s, _ in recorded], (1 - 1 / reduction_factor) * 100)
    if point[0] >= cutoff:
        return True
    if point[0] <= floor or math.isnan(point[1]):
        return False
    return not any(dominates(r, point) for r in recorded if not math.isnan(r[0]))


@dataclass
class RungDecision:
    trial_id: str
    milestone: int
    point: Point
    kept: bool
    by_front: bool  # kept only because it is on the rung's front (plain ASHA would have stopped it)


class ParetoASHA(FIFOScheduler):
    """ASHA (one bracket, stop-based like Ray's ``ASHAScheduler``) whose rungs keep the
    (score, cost) Pareto front too; see the module doc."""

    def __init__(self, score: str, cost: str, *, score_mode: str = "max", cost_mode: str = "min",
                 time_attr: str = "training_iteration", max_t: int = 100, grace_period: int = 1,
                 reduction_factor: float = 2, floor: float | None = None,
                 state_path: str | None = None, cohort: int = 0, max_concurrent: int = 1):
        super().__init__()
        if reduction_factor <= 1 or grace_period < 1 or max_t <= grace_period:
            raise ValueError("ParetoASHA needs reduction_factor > 1, grace_period >= 1 and "
                             f"max_t > grace_period (got {reduction_factor}, {grace_period}, {max_t})")
        for name, mode in (("score_mode", score_mode), ("cost_mode", cost_mode)):
            if mode not in ("max", "min"):
                raise ValueError(f"{name}={mode!r}: choose max or min")
        self.score, self.cost, self.time_attr = score, cost, time_attr
        self._sign = (1.0 if score_mode == "max" else -1.0, 1.0 if cost_mode == "min" else -1.0)
        self.rf, self.max_t = reduction_factor, max_t
        self.floor = -math.inf if floor is None else self._sign[0] * floor
        self.milestones = rung_milestones(grace_period, reduction_factor, max_t)
        self.rungs: dict[int, dict[str, Point]] = {m: {} for m in self.milestones}
        self.decisions: list[RungDecision] = []
        self.state_path = state_path
        self._loaded = False
        # the synchronous first rung (see the module doc): the cohort's trial ids as added, the
        # cohort trials paused at a rung that has not closed, the ones kept at a closed rung that
        # wait for a slot to run on; and Tune's trials by id (this driver's objects: never saved)
        self.cohort_size, self.max_concurrent = int(cohort), int(max_concurrent)
        self.cohort: list[str] = []
        self.waiting: dict[str, int] = {}
        self.promoted: list[str] = []
        self._trials: dict[str, Trial] = {}
        # every trial added (saved); on restore, the saved ones Tune has added back so far, and
        # the ones it lost (see the module doc)
        self.added: list[str] = []
        self.lost: list[str] = []
        self._restored: set[str] | None = None  # None: nothing to reconcile

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # the objectives are the scheduler's own; TuneConfig's metric/mode stay None

    def on_trial_add(self, tune_controller, trial) -> None:
        self._load()
        new = self._restored is None or trial.trial_id not in self.added
        if new:
            self._reconcile()  # a new draw: Tune has added back every trial it restored
            self.added.append(trial.trial_id)
        else:
            self._restored.add(trial.trial_id)  # Tune adds back a trial of its snapshot
        self._trials[trial.trial_id] = trial
        if trial.trial_id in self.waiting or trial.trial_id in self.promoted:
            # a restored search: Tune re-queues every unfinished trial as PENDING (all would
            # start at once); the ones that were paused at a rung go back to waiting
            if trial.status == Trial.PENDING:
                trial.set_status(Trial.PAUSED)
        elif trial.trial_id not in self.cohort and len(self.cohort) < self.cohort_size:
            self.cohort.append(trial.trial_id)
        if new:
            self._save()

    def on_trial_result(self, tune_controller, trial, result: dict, final: bool = False) -> str:
        """``final``: the trial's last result (it has ended): recorded, never paused."""
        self._load()
        self._reconcile()
        self._resumed(trial)
        if self.time_attr not in result or self.score not in result:
            return TrialScheduler.CONTINUE
        t = result[self.time_attr]
        point = (self._sign[0] * float(result[self.score]),
                 self._sign[1] * float(result.get(self.cost, math.nan)))
        for m in reversed(self.milestones):  # the highest rung reached and not yet recorded
            if t < m:
                continue
            recorded = self.rungs[m]
            if trial.trial_id in recorded:
                break
            if m == self.milestones[0] and trial.trial_id in self.cohort and not final:
                recorded[trial.trial_id] = point
                if not self._closed(m):
                    self.waiting[trial.trial_id] = m
                    result[PARKED] = m
                    self._save()
                    if len(self.waiting) >= 2:
                        faults.point("rung_waiting")
                    return TrialScheduler.PAUSE
                kept = self._close(tune_controller, m, arriving=trial.trial_id)
                return TrialScheduler.CONTINUE if kept else TrialScheduler.STOP
            others = list(recorded.values())
            kept = keeps(point, others, self.rf, self.floor)
            recorded[trial.trial_id] = point
            self._decide(trial.trial_id, m, point, others, kept)
            self._save()
            return TrialScheduler.CONTINUE if kept else TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._reconcile()
        if result:
            # its last rung counts for later ones
            self.on_trial_result(tune_controller, trial, result, final=True)
        self._resumed(trial)
        self._close_ready(tune_controller)

    def on_trial_error(self, tune_controller, trial) -> None:
        self._reconcile()
        self._resumed(trial)
        self._close_ready(tune_controller)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._reconcile()
        self._resumed(trial)
        self._close_ready(tune_controller)

    def _resumed(self, trial) -> None:
        """A kept trial that reports again (or ends) no longer waits for a slot."""
        if trial.trial_id in self.promoted:
            self.promoted.remove(trial.trial_id)
            self._save()

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        """A pending trial (a new draw; Tune starts those anyway), else a trial kept at a closed
        rung while fewer than ``max_concurrent`` run; never a trial waiting at an open rung."""
        self._load()
        self._reconcile()
        trials = tune_controller.get_trials()
        for trial in trials:
            if trial.status == Trial.PENDING:
                return trial
        if sum(t.status == Trial.RUNNING for t in trials) >= self.max_concurrent:
            return None
        paused = [t for t in trials if t.status == Trial.PAUSED]
        if paused and not self.promoted and all(t.trial_id in self.waiting for t in paused) \
                and not any(t.status == Trial.RUNNING for t in trials):
            # every trial left waits at a rung that cannot fill (its other cohort trials were
            # never drawn): judge the lowest one with what reached it
            self._close(tune_controller, min(self.waiting[t.trial_id] for t in paused))
        for tid in list(self.promoted):
            trial = self._trials.get(tid)
            if trial is None or trial.status != Trial.PAUSED:
                self.promoted.remove(tid)
                continue
            return trial
        # paused, yet neither waiting nor kept: not this scheduler's pause (FIFO's behaviour)
        return next((t for t in paused if t.trial_id not in self.waiting), None)

    def _closed(self, m: int) -> bool:
        """Rung ``m`` is complete: the whole cohort has been added, and each of its trials has
        reached the rung or ended."""
        if len(self.cohort) < self.cohort_size:
            return False
        for tid in self.cohort:
            trial = self._trials.get(tid)
            if tid not in self.rungs[m] and trial is not None and \
                    trial.status not in (Trial.TERMINATED, Trial.ERROR):
                return False
        return True

    def _close_ready(self, tune_controller) -> None:
        for m in sorted(set(self.waiting.values())):
            if self._closed(m):
                self._close(tune_controller, m)

    def _close(self, tune_controller, m: int, arriving: str | None = None) -> bool | None:
        """Judge the trials waiting at rung ``m`` (and ``arriving``, which reached it last and is
        still running) against everything recorded there: keep or stop each. Returns whether
        ``arriving`` is kept."""
        recorded = self.rungs[m]
        # in the order they were added (the startup order: cheapest first), which is the order
        # the kept ones resume in, so the cheapest of them meets the next rung first
        judged = [t for t in self.cohort if self.waiting.get(t) == m]
        judged += [t for t, r in self.waiting.items() if r == m and t not in judged]
        verdict, stop = None, []
        for tid in judged + ([arriving] if arriving else []):
            others = [p for u, p in recorded.items() if u != tid]
            kept = keeps(recorded[tid], others, self.rf, self.floor)
            self._decide(tid, m, recorded[tid], others, kept)
            if tid == arriving:
                verdict = kept
                continue
            del self.waiting[tid]
            (self.promoted if kept else stop).append(tid)
        self._save()
        for tid in stop:  # after the bookkeeping: Tune calls back (on_trial_remove) as it stops
            if tid in self._trials:
                tune_controller.stop_trial(self._trials[tid])
        return verdict

    def _reconcile(self) -> None:
        """Once, after a restore: forget the saved trials Tune did not add back (module doc)."""
        if self._restored is None:
            return
        gone = [t for t in self.added if t not in self._restored]
        self._restored = None
        if not gone:
            return
        for recorded in self.rungs.values():
            for tid in gone:
                recorded.pop(tid, None)
        for tid in gone:
            self.waiting.pop(tid, None)
        self.promoted = [t for t in self.promoted if t not in gone]
        self.cohort = [t for t in self.cohort if t not in gone]
        self.added = [t for t in self.added if t not in gone]
        self.lost += [t for t in gone if t not in self.lost]
        logger.warning("restored search: trial(s) %s started after Tune's last snapshot and were "
                       "lost with the driver; removed from the rungs (their slots are drawn "
                       "again)", ", ".join(gone))
        self._save()

    def _decide(self, tid: str, m: int, point: Point, others: list[Point], kept: bool) -> None:
        by_front = kept and bool(others) and not keeps(point, others, self.rf, math.inf)
        self.decisions.append(RungDecision(tid, m, point, kept, by_front))

    def _load(self) -> None:
        """Once: the rungs a previous run of this search wrote (nothing when there is none)."""
        if self._loaded:
            return
        self._loaded = True
        if not self.state_path:
            return
        fs, path = fsspec.core.url_to_fs(self.state_path)
        if not fs.exists(path):
            return
        state = json.loads(fs.cat_file(path))
        for m, recorded in state["rungs"].items():
            if int(m) in self.rungs:
                for tid, point in recorded.items():
                    self.rungs[int(m)].setdefault(tid, (float(point[0]), float(point[1])))
        self.cohort = state.get("cohort", [])[:self.cohort_size] or self.cohort
        self.waiting.update({tid: int(m) for tid, m in state.get("waiting", {}).items()})
        self.promoted += [tid for tid in state.get("promoted", []) if tid not in self.promoted]
        self.lost += [tid for tid in state.get("lost", []) if tid not in self.lost]
        if "added" in state:  # a restore: reconcile with what Tune adds back
            self.added = list(state["added"]) + [t for t in self.added if t not in state["added"]]
            self._restored = set()

    def _save(self) -> None:
        if self.state_path:
            fs, path = fsspec.core.url_to_fs(self.state_path)
            write_bytes_atomic(fs, path, json.dumps(
                {"score": self.score, "cost": self.cost,
                 "rungs": {str(m): {t: list(p) for t, p in r.items()} for m, r in self.rungs.items()},
                 "cohort": self.cohort, "waiting": self.waiting, "promoted": self.promoted,
                 "added": self.added, "lost": self.lost}
            ).encode())

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_trials": {}}

    def debug_string(self) -> str:
        stopped = sum(not d.kept for d in self.decisions)
        by_front = sum(d.by_front for d in self.decisions)
        sync = (f", the first {self.cohort_size} trials meet rung {self.milestones[0]} together"
                if self.cohort_size else "")
        return (f"ParetoASHA on ({self.score}, {self.cost}): rungs {self.milestones}{sync}, "
                f"{stopped} stopped, {by_front} kept for the front")


class CohortLimiter(ConcurrencyLimiter):
    """Tune's ConcurrencyLimiter for a search whose scheduler has its first ``cohort`` trials meet
    the first rung together (``ParetoASHA(cohort=...)``): a cohort trial paused there (its result
    carries ``PARKED``) does not hold one of the ``max_concurrent`` slots, so the next draw can
    run; once the whole cohort is drawn, nothing more is suggested until every cohort trial has
    ended (the scheduler runs the kept ones on), so the searcher's model starts from the cohort's
    results. A cohort trial stopped while paused is reported to the searcher with its last result,
    as a trial stopped while running is."""

    def __init__(self, searcher, max_concurrent: int, cohort: int):
        super().__init__(searcher, max_concurrent)
        self.cohort_size = int(cohort)
        self.cohort_ids: list[str] = []
        self.parked: dict[str, dict] = {}  # trial id -> the result it paused on

    def suggest(self, trial_id: str):
        if len(self.cohort_ids) >= self.cohort_size and \
                any(t in self.live_trials for t in self.cohort_ids):
            return None
        if len(self.live_trials) - len(self.parked) >= self.max_concurrent:
            return None
        config = self.searcher.suggest(trial_id)
        if isinstance(config, dict):
            self.live_trials.add(trial_id)
            self.num_unfinished_live_trials += 1
            if len(self.cohort_ids) < self.cohort_size:
                self.cohort_ids.append(trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if result.get(PARKED) is not None:
            self.parked[trial_id] = {k: v for k, v in result.items()
                                     if isinstance(v, (int, float, str, bool))}
        else:
            self.parked.pop(trial_id, None)
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        last = self.parked.pop(trial_id, None)
        if trial_id not in self.live_trials:
            return
        self.searcher.on_trial_complete(trial_id, result=result or last, error=error)
        self.live_trials.remove(trial_id)
        self.num_unfinished_live_trials -= 1

