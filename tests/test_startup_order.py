"""Startup draws run cheapest first (orchestrator.search.startup_order): the same configurations as
Optuna draws them, handed out by estimated training work, ids mapped back, queue resumable."""
from __future__ import annotations

import gzip

import pytest
from ray.tune.search import ConcurrencyLimiter, SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from _support import TANG_ALONE, Recorder, replay
from orchestrator.config import ConfigError, SearchConfig, build_config, load_space
from orchestrator.search.pareto_asha import ParetoASHA
from orchestrator.search.search import make_searcher
from orchestrator.search.startup_order import CheapestFirst, TrainingWork, startup_batch
from tasks.data import Example
from tasks.loaders import TaskData
from tasks.registry import get_task


COSTS = [5.0, 1.0, 3.0, 1.0, 9.0]  # cost of the k-th draw


def test_batch_handed_out_cheapest_first_ties_in_drawn_order_then_the_searcher():
    inner = Recorder()
    s = CheapestFirst(inner, batch=5, cost=lambda c: COSTS[c["k"]])
    got = [s.suggest(f"trial{i}")["k"] for i in range(7)]
    assert got == [1, 3, 2, 0, 4, 5, 6]
    # the batch is drawn at the first suggestion, under the wrapper's ids; later ones under Tune's
    assert inner.suggested == [f"startup-{k}" for k in range(5)] + ["trial5", "trial6"]
    assert s.drawn == [(f"startup-{k}", c) for k, c in enumerate(COSTS)]


def test_a_draw_the_estimate_cannot_price_runs_last_and_the_search_goes_on():
    def cost(c):
        if c["k"] == 0:
            raise FileNotFoundError("vectors.txt")
        return COSTS[c["k"]]

    said = []
    s = CheapestFirst(Recorder(), batch=3, cost=cost, log=said.append)
    assert [s.suggest(f"t{i}")["k"] for i in range(3)] == [1, 2, 0]
    assert "startup draw 1: work not estimated (FileNotFoundError: vectors.txt)" in said[0]
    assert "drawn positions 2, 3, 1" in said[1]


def test_results_and_completions_reach_the_searcher_under_its_own_ids():
    inner = Recorder()
    s = CheapestFirst(inner, batch=3, cost=lambda c: -c["k"])  # last drawn is cheapest
    for i in range(4):
        s.suggest(f"t{i}")
    s.on_trial_result("t0", {"dev_score": 0.7})
    s.on_trial_complete("t0", {"dev_score": 0.7})
    s.on_trial_complete("t1", None, error=True)
    s.on_trial_complete("t3", {"dev_score": 0.6})
    assert inner.results == [("startup-2", 0.7)]
    assert inner.completed == [("startup-2", False), ("startup-1", True), ("t3", False)]


def test_startup_batch_bounded_by_samples():
    assert startup_batch(10, 8) == 8
    assert startup_batch(10, 30) == 10
    assert startup_batch(0, 8) == 0
    assert startup_batch(10, -1) == 10  # num_samples=-1: until stopped


# ---------------------------------------------------------------------------------------------
# with Optuna: same draws, resumable queue

SPACE = load_space("smoke")


def tiny_data(n=40, pair=False) -> dict[str, TaskData]:
    task = get_task("mrpc" if pair else "sst2")
    ex = [Example(f"e{i}", "a fine film", "another one" if pair else None, i % 2)
          for i in range(n)]
    return {task.name: TaskData(task, ex, {"dev": ex[:10]})}


def optuna_searcher(seed=0, startup=10) -> OptunaSearch:
    return make_searcher(SearchConfig(name="t", num_samples=6, startup_order="drawn",
                                      startup_trials=startup, metric="dev_score", mode="max"),
                         SPACE, {}, tiny_data(), seed)


def test_same_configurations_as_optuna_draws_them_one_by_one():
    plain = optuna_searcher()
    drawn = [plain.suggest(f"p{i}") for i in range(6)]
    work = TrainingWork(SPACE, {}, {"sst2": (40, False, 2)})
    s = CheapestFirst(optuna_searcher(), 6, work)
    got = [s.suggest(f"c{i}") for i in range(6)]
    assert sorted(map(repr, got)) == sorted(map(repr, drawn))
    costs = [work(c) for c in got]
    assert costs == sorted(costs) and costs[0] < costs[-1]


def test_resumed_queue_hands_out_the_rest_and_the_study_learns_every_trial(tmp_path):
    """Through Tune's own save/restore of a search algorithm (its state file and the Optuna
    searcher's), into a searcher built afresh as a restored Tuner would have it."""
    work = TrainingWork(SPACE, {}, {"sst2": (40, False, 2)})

    def search_alg(seed=0):
        alg = SearchGenerator(ConcurrencyLimiter(CheapestFirst(optuna_searcher(seed), 6, work), 6))
        alg.set_search_properties("dev_score", "max", {})
        return alg

    alg = search_alg()
    wrapper = alg.searcher.searcher
    first = [wrapper.suggest(f"c{i}") for i in range(2)]
    wrapper.on_trial_complete("c0", {"dev_score": 0.8})
    alg.save_to_dir(str(tmp_path), "s")
    rest = [wrapper.suggest(f"c{i}") for i in range(2, 6)]

    restored = search_alg(seed=99)  # another study, until restored
    restored.restore_from_dir(str(tmp_path))
    again = restored.searcher.searcher
    assert [again.suggest(f"c{i}") for i in range(2, 6)] == rest
    for i in range(1, 6):
        again.on_trial_complete(f"c{i}", {"dev_score": 0.5 + i / 100})
    study = again.searcher._ot_study
    assert sorted(t.value for t in study.trials) == pytest.approx([0.51, 0.52, 0.53, 0.54, 0.55, 0.8])
    assert first[0] not in rest


def test_make_searcher_wraps_only_cheapest_first_with_a_batch():
    base = dict(name="t", metric="dev_score", mode="max")
    wrapped = make_searcher(SearchConfig(num_samples=4, **base), SPACE, {}, tiny_data(), 0)
    assert isinstance(wrapped, CheapestFirst) and wrapped.batch == 4
    assert isinstance(make_searcher(SearchConfig(num_samples=4, startup_order="drawn", **base),
                                    SPACE, {}, tiny_data(), 0), OptunaSearch)
    assert isinstance(make_searcher(SearchConfig(num_samples=4, startup_trials=1, **base),
                                    SPACE, {}, tiny_data(), 0), OptunaSearch)
    # pickled into Tune's state without its log
    import pickle
    wrapped.log = print
    assert pickle.loads(pickle.dumps(ConcurrencyLimiter(wrapped, 1))).searcher.log is None


@pytest.mark.parametrize("bad, key", [({"startup_order": "cheap"}, "startup_order"),
                                      ({"startup_trials": -1}, "startup_trials")])
def test_bad_startup_settings_name_the_key(bad, key):
    with pytest.raises(ConfigError, match=key):
        build_config({"search": bad})


# ---------------------------------------------------------------------------------------------
# the work estimate

def work_of(overrides: dict, tasks=None) -> float:
    return TrainingWork(SPACE, overrides, tasks or {"sst2": (100, False, 2)})({})


def test_work_grows_with_the_student_the_augmentation_and_the_epochs():
    base = {"augment.enabled": True, "augment.n_iter": 5, "student.hidden_size": 32}
    w = work_of(base)
    assert work_of({**base, "student.hidden_size": 64}) > 2 * w
    assert work_of({**base, "augment.n_iter": 11}) == pytest.approx(2 * w)  # 600 -> 1200 rows
    assert work_of({**base, "train.epochs": 6}) == pytest.approx(2 * w)
    # the cap on the transfer set bounds the rows
    assert work_of({**base, "augment.n_iter": 20, "augment.max_examples": 600}) == pytest.approx(w)
    assert work_of({"augment.enabled": False, "student.hidden_size": 32}) == pytest.approx(w / 6)


def test_work_rows_per_task_and_pair_default_n_iter():
    work = TrainingWork(SPACE, {"augment.enabled": True}, {"mrpc": (50, True, 2),
                                                          "sst2": (100, False, 2)})
    cfg = build_config(SPACE.config, {"augment.enabled": True})
    assert work.rows(cfg) == 50 * 11 + 100 * 21  # n_iter: 10 for pairs, 20 for single sentences


def test_word_vector_size_read_from_the_embeddings_file(tmp_path):
    glove = tmp_path / "glove.txt"
    glove.write_text("film " + " ".join(["0.1"] * 8) + "\n")
    w2v = tmp_path / "w2v.txt"
    w2v.write_text("2 300\nfilm " + " ".join(["0.1"] * 300) + "\n")
    gz = tmp_path / "w2v.txt.gz"
    gz.write_bytes(gzip.compress(w2v.read_bytes()))
    small = work_of({"student.embeddings": str(glove)})
    assert work_of({"student.embeddings": str(w2v)}) > small
    assert work_of({"student.embeddings": str(gz)}) == work_of({"student.embeddings": str(w2v)})
    assert small == pytest.approx(work_of({"student.embeddings": None, "student.embed_dim": 8}))


def test_word_vector_size_of_teacher_embeddings_is_the_base_models(tmp_path):
    from orchestrator.teachers.teacher_model import create_random_teacher

    base = create_random_teacher(tmp_path / "bert", ["film"], 2, hidden=16)
    assert work_of({"student.embeddings": "teacher", "teacher.model": str(base)}) == \
        pytest.approx(work_of({"student.embeddings": None, "student.embed_dim": 16}))


# ---------------------------------------------------------------------------------------------
# why: the tang search's 8 configurations (TANG_ALONE), each run alone to the end, replayed under
# Pareto ASHA one at a time


def replayed(order: list[str]) -> tuple[dict[str, int], float]:
    """Reports each trial made, and the seconds spent (each report 1/12 of its trial's time
    alone: a replay's estimate, not a measurement of the search)."""
    scheduler = ParetoASHA("dev_score", "latency_ms", max_t=13, grace_period=1,
                           reduction_factor=3, floor=0.5092)
    made = replay(scheduler, {t: (TANG_ALONE[t][0], TANG_ALONE[t][3]) for t in order})
    return made, sum(TANG_ALONE[t][2] * made[t] / 12 for t in order)


def test_cheapest_first_spends_less_of_the_tang_search_on_trials_it_should_stop():
    drawn = list(TANG_ALONE)
    s = CheapestFirst(Recorder(), 8, lambda c: TANG_ALONE[drawn[c["k"]]][1])
    cheap_first = [drawn[s.suggest(f"t{i}")["k"]] for i in range(8)]
    assert cheap_first == ["9fcc0c9f", "5db50ab1", "42836c99", "ef1de1b1", "f2dd5ac5",
                           "ee6cb861", "d7c93c10", "223d8123"]
    # drawn order: the first trial (a 3.7M student, dominated at the end) runs to its end
    # unjudged; cheapest first, a cheap chance-level student gets that free pass instead and the
    # 3.7M one meets a full rung a quarter into its first epoch and stops
    made_drawn, secs_drawn = replayed(drawn)
    made_cheap, secs_cheap = replayed(cheap_first)
    finished = lambda made: {t for t, n in made.items() if n == 12}  # noqa: E731
    assert finished(made_drawn) == {"ee6cb861", "ef1de1b1", "5db50ab1", "223d8123"}
    assert finished(made_cheap) == {"9fcc0c9f", "ef1de1b1", "5db50ab1", "223d8123"}
    assert made_cheap["ee6cb861"] == 1
    alone = sum(t[2] for t in TANG_ALONE.values())
    assert secs_drawn / alone == pytest.approx(0.608, abs=0.001)
    assert secs_cheap / alone == pytest.approx(0.535, abs=0.001)
