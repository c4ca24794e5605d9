"""The startup draws meet the first rung together (ParetoASHA(cohort=n) with CohortLimiter): each
pauses there until every draw has reached it, then the kept ones resume and the rest stop. Driven
through a small stand-in for Tune's loop (one trial at a time, as max_concurrent=1 runs them)."""
from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers.trial_scheduler import TrialScheduler

from _support import TANG_ALONE, Recorder
from orchestrator.config import ConfigError, SearchConfig, build_config
from orchestrator.search.pareto_asha import PARKED, CohortLimiter, ParetoASHA
from orchestrator.search.search import make_scheduler, synchronous_cohort

MAJORITY = 0.5092
CHEAPEST_FIRST = ["9fcc0c9f", "5db50ab1", "42836c99", "ef1de1b1", "f2dd5ac5", "ee6cb861",
                  "d7c93c10", "223d8123"]  # the tang search's 8 draws in the order it ran them


class FakeTrial(SimpleNamespace):
    def set_status(self, status: str) -> None:
        self.status = status


class FakeTune:
    """What Tune does around a scheduler and a searcher, as far as they can tell: asks the
    searcher for a trial while it gives one, starts the trial the scheduler chooses, feeds its
    reports (a resumed trial carries on after its last report) and acts on each decision."""

    def __init__(self, scheduler: ParetoASHA, limiter: CohortLimiter, curves: dict[str, tuple]):
        self.scheduler, self.limiter = scheduler, limiter
        self.curves = curves  # draw k -> (latency, scores per report)
        self.names = list(curves)
        self.trials: list[FakeTrial] = []
        self.made: dict[str, int] = {}  # reports each trial made
        self.starts: dict[str, int] = {}  # times each trial was started (1 + resumes)
        self.parked_seen: list[str] = []

    # -- the controller interface the scheduler calls ------------------------------------------
    def get_trials(self):
        return list(self.trials)

    def stop_trial(self, trial):
        if trial.status in (Trial.TERMINATED, Trial.ERROR):
            return
        if trial.status in (Trial.PENDING, Trial.PAUSED):
            self.scheduler.on_trial_remove(self, trial)
            self.limiter.on_trial_complete(trial.trial_id)
        trial.status = Trial.TERMINATED

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> None:
        while True:
            if not any(t.status == Trial.PENDING for t in self.trials):
                tid = self.names[min(len(self.trials), len(self.names) - 1)]  # draws come in order
                config = self.limiter.suggest(tid)
                if isinstance(config, dict):
                    assert self.names[config["k"]] == tid
                    trial = FakeTrial(trial_id=tid, status=Trial.PENDING)
                    self.trials.append(trial)
                    self.scheduler.on_trial_add(self, trial)
            trial = self.scheduler.choose_trial_to_run(self)
            if trial is None:
                assert all(t.status == Trial.TERMINATED for t in self.trials), "Tune would hang"
                return
            self._train(trial)

    def _train(self, trial) -> None:
        trial.status = Trial.RUNNING
        self.starts[trial.trial_id] = self.starts.get(trial.trial_id, 0) + 1
        latency, scores = self.curves[trial.trial_id]
        while self.made.get(trial.trial_id, 0) < len(scores):
            r = self.made.get(trial.trial_id, 0) + 1
            self.made[trial.trial_id] = r
            result = {"report": r, "dev_score": scores[r - 1], "latency_ms": latency}
            decision = self.scheduler.on_trial_result(self, trial, result)
            if decision == TrialScheduler.STOP:
                self.scheduler.on_trial_complete(self, trial, result)
                self.limiter.on_trial_complete(trial.trial_id, result)
                trial.status = Trial.TERMINATED
                return
            self.limiter.on_trial_result(trial.trial_id, result)  # after the scheduler, as Tune
            if decision == TrialScheduler.PAUSE:
                assert result.get(PARKED) is not None
                self.parked_seen.append(trial.trial_id)
                trial.status = Trial.PAUSED
                return
        self.scheduler.on_trial_complete(self, trial, result)
        self.limiter.on_trial_complete(trial.trial_id, result)
        trial.status = Trial.TERMINATED


class Draws(Recorder):
    """Hands out ``n`` draws, {"k": 0}, {"k": 1}, ... (the tang ones: in the order the search ran
    them, as CheapestFirst did)."""

    def __init__(self, n: int = len(CHEAPEST_FIRST)):
        super().__init__()
        self.n = n

    def suggest(self, trial_id):
        k = len(self.suggested)
        if k >= self.n:
            return None
        self.suggested.append(trial_id)
        return {"k": k}

    def on_trial_result(self, trial_id, result):
        self.results.append((trial_id, result["report"]))

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.completed.append((trial_id, None if result is None else result["report"]))


def tang(cohort: int, state_path=None) -> tuple[FakeTune, Draws]:
    scheduler = ParetoASHA("dev_score", "latency_ms", time_attr="report", max_t=13,
                           grace_period=1, reduction_factor=3, floor=MAJORITY,
                           state_path=state_path, cohort=cohort)
    draws = Draws()
    curves = {t: (TANG_ALONE[t][0], TANG_ALONE[t][3]) for t in CHEAPEST_FIRST}
    return FakeTune(scheduler, CohortLimiter(draws, 1, cohort), curves), draws


def seconds(tune: FakeTune) -> float:
    """The replayed cost: each report 1/12 of the trial's time alone (an estimate)."""
    return sum(TANG_ALONE[t][2] * n / 12 for t, n in tune.made.items())


def test_the_tang_draws_meet_the_first_rung_together_and_the_cheap_chance_level_one_stops():
    asynchronous, _ = tang(cohort=0)
    asynchronous.run()
    together, draws = tang(cohort=8)
    together.run()
    finished = lambda t: {k for k, n in t.made.items() if n == 12}  # noqa: E731
    # one at a time, the first trial (chance level at a quarter epoch) met empty rungs and ran
    # to its end; meeting the first rung with the other seven, it is stopped there
    assert asynchronous.made["9fcc0c9f"] == 12
    assert together.made["9fcc0c9f"] == 1
    assert finished(together) == {"5db50ab1", "ef1de1b1", "223d8123"}
    assert all(together.made[t] == 1 for t in ("42836c99", "f2dd5ac5", "ee6cb861", "d7c93c10"))
    # the first seven paused at report 1; the two kept among them resumed once; the last to
    # arrive (223d8123) was judged on arrival and went straight on
    assert together.parked_seen == CHEAPEST_FIRST[:7]
    assert {t: n for t, n in together.starts.items() if n > 1} == {"5db50ab1": 2, "ef1de1b1": 2}
    assert together.starts["223d8123"] == 1
    assert together.scheduler.waiting == {} and together.scheduler.promoted == []
    alone = sum(t[2] for t in TANG_ALONE.values())
    assert seconds(asynchronous) / alone == pytest.approx(0.535, abs=0.001)
    assert seconds(together) / alone == pytest.approx(0.482, abs=0.001)
    # every draw ended, and the searcher heard of each with its last report (the ones stopped
    # while paused too)
    assert sorted(draws.completed) == sorted(together.made.items())


def test_each_draw_is_judged_once_at_the_closed_rung_against_all_seven_others():
    together, _ = tang(cohort=8)
    together.run()
    first = [d for d in together.scheduler.decisions if d.milestone == 1]
    assert sorted(d.trial_id for d in first) == sorted(CHEAPEST_FIRST)
    assert {d.trial_id for d in first if d.kept} == {"5db50ab1", "ef1de1b1", "223d8123"}
    # the cheapest draw, at chance level after a quarter epoch: with others to be judged against,
    # neither in the top third nor kept for its speed (the majority-class floor)
    cheapest = next(d for d in first if d.trial_id == "9fcc0c9f")
    assert cheapest.point[0] == pytest.approx(0.509) and not cheapest.kept


def test_kept_draws_resume_in_the_order_they_ran():
    """The startup order (cheapest first), not the trial ids' order: the cheapest kept draw is
    the one that meets the next rungs first."""
    names = ["c9", "b5", "a1", "d0"]
    # each slower draw scores higher: all four on the front at report 1, all kept
    curves = {t: (1.0 + k, [0.70 + 0.01 * k] + [0.8] * 3) for k, t in enumerate(names)}
    scheduler = ParetoASHA("dev_score", "latency_ms", time_attr="report", max_t=5,
                           grace_period=1, reduction_factor=4, cohort=4)
    tune = FakeTune(scheduler, CohortLimiter(Draws(4), 1, 4), curves)
    started = []
    train = tune._train
    tune._train = lambda trial: (started.append(trial.trial_id), train(trial))
    tune.run()
    # d0, the last to arrive, goes straight on; then the three that waited, in their order
    assert started == ["c9", "b5", "a1", "d0", "c9", "b5", "a1"]
    assert all(n == 4 for n in tune.made.values())


def test_limiter_frees_the_slot_of_a_paused_draw_and_holds_the_searcher_after_the_cohort():
    inner = Draws()
    limiter = CohortLimiter(inner, max_concurrent=1, cohort=2)
    assert limiter.suggest("a") == {"k": 0}
    assert limiter.suggest("b") is None  # a runs
    limiter.on_trial_result("a", {"report": 1, PARKED: 1})
    assert limiter.suggest("b") == {"k": 1}  # a waits at the rung: b may run
    limiter.on_trial_result("b", {"report": 1})
    assert limiter.suggest("c") is None  # the cohort is drawn and not done
    limiter.on_trial_result("a", {"report": 2})  # a resumed
    limiter.on_trial_complete("b", {"report": 1})
    assert limiter.suggest("c") is None
    limiter.on_trial_complete("a", {"report": 12})
    assert limiter.suggest("c") == {"k": 2}  # the searcher's own phase, one at a time
    assert limiter.suggest("d") is None
    # a draw stopped while paused (Tune tells the searcher without a result) is reported with
    # the result it paused on
    limiter.on_trial_result("c", {"report": 1, PARKED: 1})
    limiter.on_trial_complete("c")
    assert inner.completed[-1] == ("c", 1)


def test_a_draw_that_never_comes_does_not_leave_the_others_waiting():
    """Fewer draws than the cohort (the searcher ran out): when nothing else can run, the rung
    is judged with what reached it."""
    scheduler = ParetoASHA("dev_score", "latency_ms", time_attr="report", max_t=13,
                           grace_period=1, reduction_factor=3, floor=MAJORITY, cohort=8)
    curves = {t: (TANG_ALONE[t][0], TANG_ALONE[t][3]) for t in CHEAPEST_FIRST[:3]}
    tune = FakeTune(scheduler, CohortLimiter(Draws(3), 1, 8), curves)
    tune.run()
    assert tune.parked_seen == CHEAPEST_FIRST[:3]
    assert tune.made == {"9fcc0c9f": 1, "5db50ab1": 12, "42836c99": 1}


def test_a_restored_search_puts_the_paused_draws_back_to_wait(tmp_path):
    """Tune re-queues every unfinished trial as PENDING on restore; the draws that waited at the
    rung go back to PAUSED (else they would all start at once) and the rung closes as before."""
    state = str(tmp_path / "pareto_asha-1.json")
    tune, _ = tang(cohort=8, state_path=state)
    pickled = pickle.dumps(tune.scheduler)  # as Tuner wrote it before any trial ran
    for k in range(3):  # three draws reach the rung and wait; then the driver dies
        assert tune.limiter.suggest(CHEAPEST_FIRST[k]) == {"k": k}
        trial = FakeTrial(trial_id=CHEAPEST_FIRST[k], status=Trial.PENDING)
        tune.trials.append(trial)
        tune.scheduler.on_trial_add(tune, trial)
        tune._train(trial)
    assert [t.status for t in tune.trials] == [Trial.PAUSED] * 3

    restored = pickle.loads(pickled)
    again = FakeTune(restored, tune.limiter, tune.curves)  # the limiter: Tune's search state
    again.made = dict(tune.made)
    again.trials = [FakeTrial(trial_id=t.trial_id, status=Trial.PENDING)
                    for t in tune.trials]
    for t in again.trials:
        restored.on_trial_add(again, t)
    assert [t.status for t in again.trials] == [Trial.PAUSED] * 3
    assert set(restored.waiting) == set(CHEAPEST_FIRST[:3])
    again.run()
    uninterrupted, _ = tang(cohort=8)
    uninterrupted.run()
    assert again.made == uninterrupted.made


def test_synchronous_first_rung_is_a_pareto_asha_setting():
    cfg = build_config({}, {"search.scheduler": "pareto_asha", "search.startup_rung": "synchronous",
                            "search.objectives": ["dev_score:max", "latency_ms:min"],
                            "search.num_samples": 6})
    assert synchronous_cohort(cfg.search) == 6
    scheduler = make_scheduler(cfg.search, 12, MAJORITY)
    assert scheduler.cohort_size == 6 and scheduler.time_attr == "report"
    assert synchronous_cohort(SearchConfig()) == 0
    # no rungs, nothing to act on: a preset's setting stands when its scheduler is switched off
    off = build_config({}, {"search.scheduler": "none", "search.startup_rung": "synchronous"})
    assert synchronous_cohort(off.search) == 0
    with pytest.raises(ConfigError, match="startup_rung=synchronous needs search.scheduler"):
        build_config({}, {"search.scheduler": "asha", "search.startup_rung": "synchronous"})
    with pytest.raises(ConfigError, match="choose asynchronous, synchronous"):
        build_config({}, {"search.startup_rung": "together"})


def test_a_trial_tune_lost_with_the_driver_leaves_no_ghost_in_the_rungs(tmp_path):
    """The driver dies after a third draw reached the rung but before Tune's next snapshot: the
    restored Tune knows two trials, and its searcher (restored from the same snapshot) draws the
    third slot again under a new trial id. The lost trial leaves every rung and waiting list, the
    new draw takes its place in the cohort, and the search ends with 8 trials at the first rung,
    deciding as an uninterrupted search does."""
    import copy

    state = str(tmp_path / "pareto_asha-1.json")
    tune, _ = tang(cohort=8, state_path=state)
    pickled = pickle.dumps(tune.scheduler)  # as Tuner wrote it before any trial ran
    snapshot = None
    for k in range(3):
        if k == 2:  # Tune's last snapshot: two trials, the searcher after two draws
            snapshot = copy.deepcopy(tune.limiter)
        assert tune.limiter.suggest(CHEAPEST_FIRST[k]) == {"k": k}
        trial = FakeTrial(trial_id=CHEAPEST_FIRST[k], status=Trial.PENDING)
        tune.trials.append(trial)
        tune.scheduler.on_trial_add(tune, trial)
        tune._train(trial)
    ghost = CHEAPEST_FIRST[2]
    assert ghost in tune.scheduler.rungs[1] and ghost in tune.scheduler.waiting

    restored = pickle.loads(pickled)
    curves = {(t if t != ghost else "drawn-again"): tune.curves[t] for t in CHEAPEST_FIRST}
    again = FakeTune(restored, snapshot, curves)
    again.made = {t: tune.made[t] for t in CHEAPEST_FIRST[:2]}
    again.trials = [FakeTrial(trial_id=t, status=Trial.PENDING) for t in CHEAPEST_FIRST[:2]]
    for t in again.trials:
        restored.on_trial_add(again, t)
    again.run()

    assert "drawn-again" in restored.cohort and ghost not in restored.cohort
    assert sorted(restored.rungs[1]) == sorted(curves)  # 8 trials, the ghost not among them
    assert all(ghost not in r for r in restored.rungs.values())
    assert restored.lost == [ghost] and restored.waiting == {} and restored.promoted == []
    assert len(again.trials) == 8
    saved = json.loads(open(state).read())
    assert saved["lost"] == [ghost] and ghost not in saved["added"] and len(saved["added"]) == 8
    uninterrupted, _ = tang(cohort=8)
    uninterrupted.run()
    assert {t.replace("drawn-again", ghost): n for t, n in again.made.items()} \
        == uninterrupted.made


def test_a_restored_search_that_lost_no_trial_keeps_its_rungs(tmp_path):
    state = str(tmp_path / "pareto_asha-1.json")
    tune, _ = tang(cohort=0, state_path=state)
    pickled = pickle.dumps(tune.scheduler)
    tune.run()
    restored = pickle.loads(pickled)
    again = FakeTune(restored, tune.limiter, tune.curves)
    for t in tune.trials:
        restored.on_trial_add(again, FakeTrial(trial_id=t.trial_id, status=Trial.TERMINATED))
    assert restored.choose_trial_to_run(again) is None
    assert restored.lost == [] and restored.rungs == tune.scheduler.rungs
