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
are counted in the scheduler's time attribute (Tune's ``training_iteration``: reports). Tune does
not checkpoint its scheduler, so with ``state_path`` the rungs are written there after every
decision and read back when a restored search first uses them: a resumed search judges its next
trials against the ones before the interruption.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import fsspec
import numpy as np
from ray.tune.schedulers.trial_scheduler import FIFOScheduler, TrialScheduler

from orchestrator.cache import write_bytes_atomic

Point = tuple[float, float]  # (score, cost), both oriented: higher score, lower cost is better


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
                 state_path: str | None = None):
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

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # the objectives are the scheduler's own; TuneConfig's metric/mode stay None

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self.time_attr not in result or self.score not in result:
            return TrialScheduler.CONTINUE
        self._load()
        t = result[self.time_attr]
        point = (self._sign[0] * float(result[self.score]),
                 self._sign[1] * float(result.get(self.cost, math.nan)))
        for m in reversed(self.milestones):  # the highest rung reached and not yet recorded
            if t < m:
                continue
            recorded = self.rungs[m]
            if trial.trial_id in recorded:
                break
            others = list(recorded.values())
            kept = keeps(point, others, self.rf, self.floor)
            by_front = kept and bool(others) and not keeps(point, others, self.rf, math.inf)
            recorded[trial.trial_id] = point
            self.decisions.append(RungDecision(trial.trial_id, m, point, kept, by_front))
            self._save()
            return TrialScheduler.CONTINUE if kept else TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if result:
            self.on_trial_result(tune_controller, trial, result)  # its last rung counts for later ones

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
        for m, recorded in json.loads(fs.cat_file(path))["rungs"].items():
            if int(m) in self.rungs:
                for tid, point in recorded.items():
                    self.rungs[int(m)].setdefault(tid, (float(point[0]), float(point[1])))

    def _save(self) -> None:
        if self.state_path:
            fs, path = fsspec.core.url_to_fs(self.state_path)
            write_bytes_atomic(fs, path, json.dumps(
                {"score": self.score, "cost": self.cost,
                 "rungs": {str(m): {t: list(p) for t, p in r.items()} for m, r in self.rungs.items()}}
            ).encode())

    def debug_string(self) -> str:
        stopped = sum(not d.kept for d in self.decisions)
        by_front = sum(d.by_front for d in self.decisions)
        return (f"ParetoASHA on ({self.score}, {self.cost}): rungs {self.milestones}, "
                f"{stopped} stopped, {by_front} kept for the front")

