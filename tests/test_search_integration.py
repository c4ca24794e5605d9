"""The smoke search end to end (teacher -> labels -> Ray Train -> Tune/Optuna/ASHA -> MLflow), then
the record is read back from the MLflow store."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator import tracking
from orchestrator.cli import resolve_run

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def ray_session():
    import ray

    from orchestrator.ray_runtime import init_ray
    init_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _runs(uri: str, search: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("distillray")
    assert exp is not None, "the search created no MLflow experiment"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parent = [r for r in runs if r.data.tags.get(tracking.TAG_KIND) == "search"
              and r.data.tags.get(tracking.TAG_SEARCH) == search]
    children = [r for r in runs if r.data.tags.get(tracking.TAG_KIND) == "trial"
                and r.data.tags.get(tracking.TAG_SEARCH) == search]
    teachers = [r for r in runs if r.data.tags.get(tracking.TAG_KIND) == "teacher"]
    return client, parent, children, teachers


def test_smoke_search_records_parent_children_and_artifacts(ray_session, workdir):
    from orchestrator.search import run_search

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    space, cfg, overrides = resolve_run("smoke", ["search.num_samples=3"], extra={"tracking.uri": uri})
    out = run_search(cfg, space, overrides)

    assert len(out.table) == 3
    assert out.best and out.best["best_dev_score"] > 0.8, out.table
    client, parent, children, teachers = _runs(uri, "smoke")
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert parent[0].data.tags.get("distillray.best_trial") == out.best["trial_id"]
    assert len(teachers) == 1 and "dev_accuracy" in teachers[0].data.metrics
    assert len(children) == 3, "exactly one child run per trial"
    for c in children:
        assert c.data.tags[tracking.TAG_PARENT] == parent[0].info.run_id
        assert c.info.status in ("FINISHED", "KILLED"), c.info.status
        assert "dev_score" in c.data.metrics and "latency_ms" in c.data.metrics
        assert "sampled.train.lr" in c.data.params
        history = client.get_metric_history(c.info.run_id, "dev_score")
        assert [m.step for m in history] == list(range(1, len(history) + 1))
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert finished, "at least one trial ran to its last epoch"
    names = {a.path for a in client.list_artifacts(finished[0].info.run_id, "student")}
    assert {"student/model.safetensors", "student/vocab.json", "student/student.json"} <= names
    top = {a.path for a in client.list_artifacts(finished[0].info.run_id)}
    assert "learning_curve.png" in top
    parent_files = {a.path for a in client.list_artifacts(parent[0].info.run_id)}
    assert {"search_summary.json", "search_space.yaml"} <= parent_files

    # the best student can be reloaded from its artifacts and predicts like the search measured
    from orchestrator.registry import best_of_search
    info = best_of_search("smoke", uri)
    assert info["trial_id"] == out.best["trial_id"]
    assert abs(info["dev_score"] - out.best["best_dev_score"]) < 1e-9


def test_failing_trials_are_retried_then_marked_failed(ray_session, workdir):
    from orchestrator.search import run_search

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    bad = workdir / "missing-vectors.txt"
    space_file = workdir / "failing.yaml"
    space_file.write_text(Path(load_smoke_path()).read_text().replace(
        "space:\n", f"space:\n  student.embeddings: {{type: choice, values: ['{bad}']}}\n"))
    space, cfg, overrides = resolve_run(str(space_file), ["search.num_samples=2",
                                                         "search.name=failing"],
                                        extra={"tracking.uri": uri})
    out = run_search(cfg, space, overrides)
    assert list(out.table["status"]) == ["ERROR", "ERROR"]
    _, parent, children, _ = _runs(uri, "failing")
    assert len(children) == 2, "a retried trial keeps its one child run"
    for c in children:
        assert c.info.status == "FAILED"
        assert "missing-vectors.txt" in c.data.tags[tracking.TAG_ERROR]
        assert c.data.tags["distillray.attempts"] == "2"  # first try + one retry
    assert parent[0].info.status == "FAILED"


def load_smoke_path() -> str:
    from search_spaces.loader import preset_path
    return str(preset_path("smoke"))
