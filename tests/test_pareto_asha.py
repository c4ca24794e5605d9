"""Early stopping on two objectives (orchestrator.search.pareto_asha), the trivial-predictor floor,
and the Pareto front of a search's summary."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from _support import replay
from orchestrator.config import ConfigError, ExperimentConfig, SearchConfig, validate
from orchestrator.search.pareto_asha import ParetoASHA, keeps, rung_milestones
from orchestrator.search.search import make_scheduler, pareto_front, score_floor
from tasks.loaders import TaskData
from tasks.data import Example
from tasks.metrics import trivial_score
from tasks.registry import get_task

# the 8-trial tang search of 2026-11-25 (run 20261125-223216) under plain ASHA, in arrival order:
# trial -> (batch-1 latency in ms, dev accuracy at reports 1, 2, 3, ...). Its real reports up to
# the stop; the ones after (52ec5f75 from the 4th, 20a3cc60, 1f4436c2 and 21c57f03 from the 2nd)
# are made up, so a scheduler that keeps such a trial has something to be fed
TANG = {
    "ecefbfdd": (4.23, [0.658, 0.656, 0.732, 0.752, 0.744, 0.747, 0.747, 0.751, 0.748]),
    "d8943648": (0.33, [0.509, 0.509]),
    "083bd09d": (1.54, [0.663, 0.702, 0.737, 0.734, 0.757, 0.749, 0.756, 0.763, 0.760]),
    "52ec5f75": (0.43, [0.704, 0.648, 0.735, 0.740, 0.745, 0.750, 0.752, 0.755, 0.757]),
    "20a3cc60": (3.89, [0.583, 0.600]),
    "1f4436c2": (1.34, [0.509, 0.509]),
    "21c57f03": (2.03, [0.655, 0.660]),
    "bf39d7b8": (4.78, [0.729, 0.757, 0.760, 0.761, 0.760, 0.784, 0.748, 0.768, 0.786]),
}
MAJORITY = 0.5092  # SST-2 dev accuracy of always predicting the training set's majority class


def test_rungs_match_ray_asha():
    assert rung_milestones(1, 3, 13) == [1, 3, 9]
    assert rung_milestones(1, 2, 4) == [1, 2]
    assert rung_milestones(2, 2, 20) == [2, 4, 8, 16]


def test_keeps_top_fraction_front_and_never_chance_level():
    recorded = [(0.70, 4.0), (0.72, 1.5), (0.60, 3.0)]
    assert keeps((0.65, 9.0), [], 3)  # the first trial at a rung always goes on
    assert keeps((0.75, 9.0), recorded, 3)  # best score: ASHA's own rule
    assert not keeps((0.65, 2.0), recorded, 3)  # dominated by (0.72, 1.5)
    assert keeps((0.65, 1.0), recorded, 3)  # fastest and above the floor: on the front
    assert not keeps((0.509, 0.3), recorded, 3, floor=MAJORITY)  # fastest, but chance level
    assert keeps((0.509, 0.3), recorded, 3)  # (without a floor it would be kept)
    assert not keeps((0.65, math.nan), recorded, 3)  # no latency: ASHA's rule alone
    assert keeps((0.65, 2.0), [(0.70, 2.0), (0.60, 2.0), (math.nan, 1.0)], 3, floor=0.5) is False


def test_on_the_tang_search_it_keeps_what_asha_keeps_plus_the_fast_student():
    from ray.tune.schedulers import ASHAScheduler

    asha = replay(ASHAScheduler(metric="dev_score", mode="max", time_attr="training_iteration",
                                max_t=13, grace_period=1, reduction_factor=3), TANG)
    pareto = replay(ParetoASHA("dev_score", "latency_ms", max_t=13, grace_period=1,
                               reduction_factor=3, floor=MAJORITY), TANG)
    # what ASHA did in that search: 52ec5f75 (0.735 at 0.43 ms, the fastest good student) was
    # stopped at the third report, a hair below the top third of two trials 3.5 to 10 times slower
    assert asha["52ec5f75"] == 3
    assert pareto["52ec5f75"] == len(TANG["52ec5f75"][1])  # on the front at every rung
    for tid, n in asha.items():
        assert pareto[tid] >= n, f"{tid}: ParetoASHA stopped a trial ASHA kept"
    # the chance-level fast trials and the dominated ones still stop at the first rung
    for tid in ("d8943648", "1f4436c2", "20a3cc60", "21c57f03"):
        assert pareto[tid] == 1, tid


def test_minimised_score_and_maximised_cost_are_oriented():
    s = ParetoASHA("loss", "throughput", score_mode="min", cost_mode="max", max_t=4,
                   grace_period=1, reduction_factor=2, floor=1.0)
    made = replay(s, {"a": (100.0, [0.5, 0.5]), "b": (50.0, [0.6, 0.6]),  # b: worse on both
                      "c": (500.0, [0.7, 0.7]), "d": (900.0, [1.2, 1.2])},  # d: past the floor
                  score="loss", cost="throughput")
    assert made == {"a": 2, "b": 1, "c": 2, "d": 1}


def test_scheduler_is_built_from_the_search_config():
    s = SearchConfig(objectives=["dev_score:max", "latency_ms:min"], scheduler="pareto_asha",
                     grace_period=1, reduction_factor=3)
    sched = make_scheduler(s, reports=12, floor=0.5)
    assert isinstance(sched, ParetoASHA) and sched.milestones == [1, 3, 9]
    assert (sched.score, sched.cost, sched.floor) == ("dev_score", "latency_ms", 0.5)


@pytest.mark.parametrize("change, message", [
    ({"scheduler": "hyperband"}, "choose asha, pareto_asha, none"),
    ({"scheduler": "pareto_asha"}, "give two search.objectives"),
    ({"objectives": ["dev_score"]}, "not 'metric:max'"),
    ({"objectives": ["latency_ms:min", "dev_score:max"]}, "the first objective is the score"),
    ({"reduction_factor": 1}, "reduction_factor=1"),
])
def test_bad_search_settings_are_refused(change, message):
    cfg = ExperimentConfig(search=SearchConfig(**change))
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_trivial_score_is_the_majority_class_or_a_constant():
    sst2 = get_task("sst2")
    assert trivial_score(sst2, [1, 1, 0], [1, 0, 0, 0]) == pytest.approx(0.25)
    assert trivial_score(sst2, [0, 0, 1], [1, 0, 0, 0]) == pytest.approx(0.75)
    assert trivial_score(get_task("cola"), [1, 1, 0], [1, 0, 1]) == 0.0  # MCC of a constant
    assert trivial_score(get_task("stsb"), [1.0, 3.0], [0.5, 4.0, 2.0]) == 0.0
    mrpc = trivial_score(get_task("mrpc"), [1, 1, 0], [1, 1, 0, 0])  # mean of accuracy and F1
    assert mrpc == pytest.approx((0.5 + 2 / 3) / 2)


def _data(task: str, train: list, dev: list) -> TaskData:
    spec = get_task(task)
    def ex(i, y):
        return Example(i, "x", "y" if spec.is_pair else None, y)
    return TaskData(spec, [ex(i, y) for i, y in enumerate(train)],
                    {spec.dev_splits[0]: [ex(i, y) for i, y in enumerate(dev)]})


def test_score_floor_follows_dev_score_and_min_score():
    data = {"sst2": _data("sst2", [1, 1, 0], [1, 0, 0, 0]), "cola": _data("cola", [1, 0, 0], [1, 0])}
    assert score_floor(SearchConfig(), data) == pytest.approx((0.25 + 0.0) / 2)
    assert score_floor(SearchConfig(min_score=0.6), data) == 0.6
    assert score_floor(SearchConfig(metric="sst2_accuracy"), data) is None


def test_pareto_front_leaves_out_students_at_chance():
    df = pd.DataFrame({"s": [0.509, 0.735, 0.77, 0.79, 0.76],
                       "lat": [0.33, 0.43, 1.54, 4.78, 4.23]})
    assert list(pareto_front(df, "s", "lat").index) == [0, 1, 2, 3]
    assert list(pareto_front(df, "s", "lat", floor=MAJORITY).index) == [1, 2, 3]
    loss = pd.DataFrame({"s": [0.2, 0.1, 0.3], "lat": [1.0, 2.0, 3.0]})
    assert list(pareto_front(loss, "s", "lat", score_mode="min").index) == [0, 1]
    assert np.isfinite(df["s"]).all()


def test_rungs_survive_a_restored_search(tmp_path):
    """Tune does not checkpoint schedulers: a restored search unpickles the scheduler as it was
    built (empty rungs, same state_path) and must read the rungs written before the cut."""
    import pickle

    state = str(tmp_path / "tune" / "tang" / "pareto_asha-1234abcd.json")
    first = ParetoASHA("dev_score", "latency_ms", max_t=13, grace_period=1, reduction_factor=3,
                       floor=MAJORITY, state_path=state)
    pickled = pickle.dumps(first)  # what Tuner writes to tuner.pkl before any trial runs
    before = dict(list(TANG.items())[:4])
    replay(first, before)

    restored = pickle.loads(pickled)
    assert restored.state_path == state and not any(restored.rungs.values())
    for tid in before:  # Tune adds back every trial of its snapshot first (finished ones too)
        restored.on_trial_add(None, SimpleNamespace(trial_id=tid, status="TERMINATED"))
    # 21c57f03 (0.655 at 2.03 ms) is dominated by 083bd09d (0.663 at 1.54 ms), a trial from
    # before the cut: stopped at the first rung. With the rungs lost it would have been the first
    # trial at every rung and run to its end.
    made = replay(restored, {"21c57f03": TANG["21c57f03"]})
    assert made == {"21c57f03": 1}
    assert set(restored.rungs[1]) == set(before) | {"21c57f03"}
    forgetful = ParetoASHA("dev_score", "latency_ms", max_t=13, grace_period=1,
                           reduction_factor=3, floor=MAJORITY)
    assert replay(forgetful, {"21c57f03": TANG["21c57f03"]}) == {"21c57f03": 2}


def test_the_best_trial_does_not_depend_on_the_order_trials_are_listed(tmp_path):
    """Tied scores go to the faster student, then the trial id: a resumed search, which lists
    its trials in another order, names (and registers) the same best trial."""
    from mlflow.tracking import MlflowClient

    from orchestrator.runtime import tracking
    from orchestrator.search.search import summarize

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = tracking.get_experiment_id(client, "distillray", str(tmp_path / "artifacts"))
    table = pd.DataFrame({"trial_id": ["b", "a", "c", "d"], "status": ["DONE"] * 4,
                          "best_dev_score": [1.0, 1.0, 1.0, 0.9],
                          "latency_ms": [0.5, 0.5, 0.8, 0.1],
                          "non_embedding_params": [1.0] * 4, "config": [{}] * 4})
    for rows in (table, table.iloc[::-1], table.iloc[[2, 0, 3, 1]]):
        parent = client.create_run(exp).info.run_id
        best, _ = summarize(client, parent, rows.reset_index(drop=True), "dev_score", "max")
        assert best["trial_id"] == "a" and best["dev_score"] == 1.0
