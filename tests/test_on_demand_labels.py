"""On-demand teacher labels (``train.soft_labels=on_demand``) and several reports per epoch:
rows are labeled when first trained on, through the shared soft-label cache; an early report has
paid for only part of the transfer set; the labels equal the precomputed ones."""
from __future__ import annotations

import numpy as np
import pytest

from orchestrator.teachers.cache import SoftLabelCache
from orchestrator.teachers.on_demand_labels import OnDemandLogits, merge_stats
from orchestrator.teachers.teacher_pool import LabelResult

pytestmark = pytest.mark.timeout(600)


class FakeClient:
    """Stands in for a PoolClient: logits are a function of the text; records every call."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def label_texts(self, texts_a, texts_b=None, head=None, max_length=128, cache=None,
                    progress=True):
        assert cache is None, "on-demand labels write the cache themselves, in batches"
        self.calls.append(list(texts_a))
        logits = np.array([[len(t), -len(t)] for t in texts_a], dtype=np.float32)
        return LabelResult(logits=logits, hits=0, misses=len(texts_a), truncated=0, seconds=0.0)


def _labels(tmp_path, texts, client):
    cache = SoftLabelCache(str(tmp_path / "cache"), "teacher-x", "bundled", 32, "sst2")
    return OnDemandLogits(texts, None, 2, client, cache, "sst2", 32), cache


def test_rows_are_labeled_once_when_first_needed_and_cached_at_flush(tmp_path):
    texts = ["a b", "c", "a b", "dd ee ff", "g", "hh"]  # rows 0 and 2 share a text
    client = FakeClient()
    lab, cache = _labels(tmp_path, texts, client)
    assert np.isnan(lab.values).all() and lab.labeled_fraction == 0.0

    lab.ensure([0, 1, 2])
    assert client.calls == [["a b", "c"]], "one call, each distinct text once"
    assert lab.have.tolist() == [True, True, True, False, False, False]
    np.testing.assert_array_equal(lab.values[2], [3, -3])
    assert np.isnan(lab.values[3:]).all(), "rows not asked for stay unlabeled"
    lab.ensure([1, 2])
    assert len(client.calls) == 1, "labeled rows are never fetched again"
    assert len(cache) == 0, "nothing written before flush"
    lab.flush()
    assert len(SoftLabelCache(str(tmp_path / "cache"), "teacher-x", "bundled", 32, "sst2")) == 2

    # a later trial with the same texts: cache hits, the teacher is asked only for the rest
    client2 = FakeClient()
    lab2, _ = _labels(tmp_path, texts, client2)
    lab2.ensure(range(6))
    assert client2.calls == [["dd ee ff", "g", "hh"]]
    s = lab2.stats()
    assert (s["label_cache_hits"], s["label_cache_misses"], s["labeled_fraction"]) == (3, 3, 1.0)
    m = merge_stats({"a": lab, "b": lab2})
    assert m["labeled_fraction"] == pytest.approx(9 / 12)
    assert m["label_cache_misses"] == 3 + 3 and m["label_cache_hits"] == 3


def test_stream_fetches_a_window_ahead_not_the_whole_split(tmp_path):
    from orchestrator.training.bundle import TaskTensors
    from orchestrator.training.train import TaskStream

    n = 400
    texts = [f"text {i}" for i in range(n)]
    client = FakeClient()
    lab, _ = _labels(tmp_path, texts, client)
    data = TaskTensors(ids_a=[[1 + i % 7] * (1 + i % 5) for i in range(n)], ids_b=None,
                       types=None, label=np.full(n, np.nan), logits=lab.values)
    stream = TaskStream(data, np.arange(n), batch_size=10, seed=0, labels=lab, prefetch_rows=30)
    first = stream.next()
    assert not np.isnan(first["logits"].numpy()).any()
    assert lab.have.sum() == 40, "the batch plus a 30-row window"
    for _ in range(n // 10 - 1):  # the rest of the pass
        b = stream.next()
        assert not np.isnan(b["logits"].numpy()).any()
    assert lab.labeled_fraction == 1.0
    calls = len(client.calls)
    assert calls == 10, "one teacher call per window of 4 batches"
    for _ in range(n // 10):  # a second pass reads labels from memory
        stream.next()
    assert len(client.calls) == calls
    np.testing.assert_array_equal(lab.values[:, 0], [len(t) for t in texts])


# ---------------------------------------------------------------------------------------------
# end to end: the smoke search with on-demand labels and two reports per epoch


@pytest.fixture(scope="module")
def on_demand_search(ray_search, tmp_path_factory):
    import os

    from orchestrator.app.run import resolve_run
    from orchestrator.search.search import run_search

    work = tmp_path_factory.mktemp("on_demand")
    old = os.getcwd()
    os.chdir(work)
    try:
        uri = f"sqlite:///{work / 'mlflow.db'}"
        space, cfg, overrides = resolve_run(
            "smoke", ["search.num_samples=2", "train.soft_labels=on_demand",
                      "train.evals_per_epoch=2", "search.name=smoke-on-demand"],
            extra={"tracking.uri": uri, "work_root": str(work / ".distillray")})
        out = run_search(cfg, space, overrides)
        yield uri, out, cfg, space, overrides
    finally:
        os.chdir(old)


def test_search_reports_twice_per_epoch_and_labels_as_it_trains(on_demand_search):
    from mlflow.tracking import MlflowClient

    from orchestrator.runtime import tracking

    uri, out, cfg, _, _ = on_demand_search
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("distillray")
    children = [r for r in client.search_runs([exp.experiment_id], max_results=100)
                if r.data.tags.get(tracking.TAG_SEARCH) == "smoke-on-demand"
                and r.data.tags.get(tracking.TAG_KIND) == "trial"]
    assert len(children) == 2
    first = min(children, key=lambda r: r.info.start_time)  # cold cache: pays for every label
    rid = first.info.run_id
    epochs = [m.value for m in sorted(client.get_metric_history(rid, "epoch"), key=lambda m: m.step)]
    assert epochs[:2] == [0.5, 1.0], "two reports per epoch"
    if first.info.status == "FINISHED":
        assert epochs == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    frac = [m.value for m in sorted(client.get_metric_history(rid, "labeled_fraction"),
                                    key=lambda m: m.step)]
    assert 0.3 < frac[0] < 0.7, "half an epoch in, about half the rows have been labeled"
    assert frac[1] == 1.0
    m = first.data.metrics
    assert m["label_cache_misses"] == first.data.metrics["transfer_size"] == 600
    assert m["label_cache_hits"] == 0
    second = max(children, key=lambda r: r.info.start_time)
    assert second.data.metrics["label_cache_misses"] == 0, "the first trial's labels were cached"
    statuses = set(out.table["status"])
    assert statuses <= {"DONE", "STOPPED_EARLY"}, out.table


def test_on_demand_labels_equal_the_teachers_and_fill_the_shared_cache(on_demand_search):
    from orchestrator.search.search import ensure_teachers
    from orchestrator.stages.pipeline import load_data, prepare_bundle
    from orchestrator.teachers.teacher_pool import TeacherPool
    from mlflow.tracking import MlflowClient
    from orchestrator.config import apply_sample
    from orchestrator.runtime import tracking

    uri, _, cfg, space, overrides = on_demand_search
    cfg = apply_sample(space, space.centre_sample(), {**overrides, "train.soft_labels": "precomputed"})
    data = load_data(cfg)
    client = MlflowClient(uri)
    teachers = ensure_teachers(cfg, data, client, tracking.experiment_id_for(client, cfg))
    bundle = prepare_bundle(cfg, data, teachers)  # a precomputed bundle of the same rows
    assert bundle.label_stats["label_cache_misses"] == 0, "every label came from the cache"
    from orchestrator.training.bundle import read_split
    cached = read_split(bundle.path / "train-sst2.parquet").logits
    texts = [e.text_a for e in data["sst2"].train]
    ref = teachers["sst2"]
    with TeacherPool(ref.path, cfg.pool) as pool:  # the teacher asked afresh, no cache
        fresh = pool.label_texts(texts[:50], head=ref.head, max_length=ref.max_length,
                                 progress=False).logits
    np.testing.assert_allclose(cached[:50], fresh, rtol=1e-5, atol=1e-5)
