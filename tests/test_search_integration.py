"""The smoke search end to end (teacher -> labels -> Ray Train -> Tune/Optuna/ASHA -> MLflow), then
the record is read back from the MLflow store."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.app.run import resolve_run
from orchestrator.runtime import tracking
from conftest import wait_for_health

pytestmark = pytest.mark.timeout(600)


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


@pytest.fixture(scope="module")
def smoke(ray_search, tmp_path_factory):
    """One smoke search shared by the tests that read its record."""
    from orchestrator.search.search import run_search

    work = tmp_path_factory.mktemp("smoke")
    old = os.getcwd()
    os.chdir(work)
    try:
        uri = f"sqlite:///{work / 'mlflow.db'}"
        space, cfg, overrides = resolve_run("smoke", ["search.num_samples=3",
                                                      "search.register_model=smoke-student"],
                                            extra={"tracking.uri": uri})
        out = run_search(cfg, space, overrides)
    finally:
        os.chdir(old)
    return uri, out


def test_smoke_search_records_parent_children_and_artifacts(smoke):
    uri, out = smoke
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
        # what the trial's start cost before its first step, once (no trial here resumed)
        startup = client.get_metric_history(c.info.run_id, "startup_seconds")
        assert [m.step for m in startup] == [1] and 0 < startup[0].value < 600, startup
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert finished, "at least one trial ran to its last epoch"
    names = {a.path for a in client.list_artifacts(finished[0].info.run_id, "student")}
    assert {"student/model.safetensors", "student/vocab.json", "student/student.json"} <= names
    top = {a.path for a in client.list_artifacts(finished[0].info.run_id)}
    assert "learning_curve.png" in top
    parent_files = {a.path for a in client.list_artifacts(parent[0].info.run_id)}
    assert {"search_summary.json", "search_space.yaml", "pareto.png"} <= parent_files
    # the front leaves out students no better than always predicting the majority class
    summary = json.loads(Path(client.download_artifacts(parent[0].info.run_id,
                                                        "search_summary.json")).read_text())
    assert 0.3 < summary["min_score"] < 0.7, summary["min_score"]  # two balanced-ish classes
    assert parent[0].data.metrics["min_score"] == pytest.approx(summary["min_score"])
    assert summary["pareto"] and all(p["best_dev_score"] > summary["min_score"]
                                     for p in summary["pareto"])

    # the best student can be reloaded from its artifacts and predicts like the search measured
    from orchestrator.record.registry import best_of_search
    info = best_of_search("smoke", uri)
    assert info["trial_id"] == out.best["trial_id"]
    assert abs(info["dev_score"] - out.best["best_dev_score"]) < 1e-9


def test_experiment_kind_trial_names_and_parent_comparison(smoke):
    """The UI opens the experiment on its runs; trials say what they train; the parent names the
    searched keys and the winner's values; every trial carries those keys and the score, which
    MLflow's parallel-coordinates comparison of the trials reads."""
    import re

    uri, out = smoke
    client, parent, children, _ = _runs(uri, "smoke")
    exp = client.get_experiment_by_name("distillray")
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    names = sorted(c.info.run_name for c in children)
    assert all(re.fullmatch(r"trial-\d+ bilstm h(16|32) lr\d(\.\d)?e-\d", n) for n in names), names
    assert {n.split()[0] for n in names} == {"trial-1", "trial-2", "trial-3"}
    p = parent[0].data.params
    searched = p["searched"].split(",")
    assert searched == ["train.lr", "student.hidden_size", "student.dropout", "train.alpha"]
    assert all(f"best.{k}" in p for k in searched)
    for c in children:
        assert all(f"sampled.{k}" in c.data.params for k in searched)
        assert "best_dev_score" in c.data.metrics and "latency_ms" in c.data.metrics


def test_failing_trials_are_retried_then_marked_failed(ray_search, workdir):
    from orchestrator.search.search import run_search

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    bad = workdir / "missing-vectors.txt"
    space_file = workdir / "failing.yaml"
    space_file.write_text(Path(load_smoke_path()).read_text().replace(
        "space:\n", f"space:\n  student.embeddings: {{type: choice, values: ['{bad}']}}\n"))
    # one trial: its retry is the behaviour under test (search.max_failures: 1 by default)
    space, cfg, overrides = resolve_run(str(space_file), ["search.num_samples=1",
                                                         "search.name=failing"],
                                        extra={"tracking.uri": uri})
    out = run_search(cfg, space, overrides)
    assert list(out.table["status"]) == ["ERROR"]
    _, parent, children, _ = _runs(uri, "failing")
    assert len(children) == 1, "a retried trial keeps its one child run"
    for c in children:
        assert c.info.status == "FAILED"
        assert "missing-vectors.txt" in c.data.tags[tracking.TAG_ERROR]
        assert c.data.tags["distillray.attempts"] == "2"  # first try + one retry
    assert parent[0].info.status == "FAILED"


@pytest.mark.parametrize("workers", [0, 1], ids=["in-trial", "train-workers"])
def test_startup_draws_meet_the_first_rung_together(ray_search, workdir, workers):
    """search.startup_rung=synchronous through Tune and Ray Train: each draw pauses at the first
    rung until all have reached it; the kept ones resume their Train run from the checkpoint of
    that report (not from scratch), the others stop; one child run per trial, none left running.
    Both where the students train: in the trial's process (local mode) and on Train workers
    (two draws there: each start of a Train run starts its controller and worker actors)."""
    from orchestrator.search.search import run_search

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    draws, epochs = (4, 4) if workers == 0 else (2, 3)
    # the rungs weigh dev score against parameter count, not the preset's measured latency: the
    # draws run cheapest first, and the seeded first draw is the only one with hidden size 16, so
    # the first to wait at the rung has the fewest parameters, is on the rung's front (its score
    # beats the majority class's), and is kept and resumes. Weighed against latency, which moves
    # from run to run, it could be dominated and stopped, and then no draw would resume.
    space, cfg, overrides = resolve_run("smoke", [f"search.num_samples={draws}",
                                                  "search.name=together",
                                                  "search.startup_rung=synchronous",
                                                  "search.objectives=[dev_score:max, "
                                                  "non_embedding_params:min]",
                                                  f"train.epochs={epochs}",
                                                  f"train.num_workers={workers}"],
                                        extra={"tracking.uri": uri})
    out = run_search(cfg, space, overrides)
    ids = set(out.table["trial_id"])
    assert len(ids) == draws and not out.table["error"].notna().any(), out.table
    state = json.loads(next((Path(cfg.work_root) / "tune" / "together.scheduler").glob(
        "pareto_asha-*.json")).read_text())
    assert set(state["cohort"]) == ids and set(state["rungs"]["1"]) == ids
    assert state["waiting"] == {} and state["promoted"] == []
    first, rung = state["cohort"][0], state["rungs"]["1"]  # (score, parameters) per trial
    assert all(rung[first][1] < p[1] for t, p in rung.items() if t != first), rung
    client, _, children, _ = _runs(uri, "together")
    assert len(children) == draws, "exactly one child run per trial"
    resumed = [c for c in children if c.data.tags.get("distillray.resumed") == "true"]
    assert resumed, "a draw kept at the first rung resumed after waiting there"
    for c in children:
        done = out.table.set_index("trial_id").loc[c.data.tags[tracking.TAG_TRIAL], "status"]
        assert c.info.status == ("FINISHED" if done == "DONE" else "KILLED"), (c.info.status, done)
        if done != "DONE":
            assert c.data.tags.get("distillray.early_stopped") == "true"
    for c in resumed:
        assert c.data.tags["distillray.attempts"] == "2"
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "dev_score")]
        assert steps.count(1) == 1 and max(steps) >= 2, steps  # went on from its checkpoint
        # each start logs what it cost: the first at report 1, the resume at its first report
        starts = sorted(m.step for m in client.get_metric_history(c.info.run_id,
                                                                   "startup_seconds"))
        assert starts == [1, 2], starts


def load_smoke_path() -> str:
    from search_spaces.loader import preset_path
    return str(preset_path("smoke"))


def test_best_command_prints_the_best_trial(smoke, capsys):
    from orchestrator.cli import main

    uri, out = smoke
    assert main(["best", "--search", "smoke", "--tracking-uri", uri]) == 0
    printed = capsys.readouterr().out
    assert f"trial_id: {out.best['trial_id']}" in printed
    assert "sampled.train.lr" in printed
    assert main(["best", "--search", "nope", "--tracking-uri", uri]) == 2
    assert "no search named 'nope'" in capsys.readouterr().err


def test_mlflow_ui_serves_the_search_runs(smoke, tmp_path):
    """`distillray ui` binds 127.0.0.1, answers /health and lists the search's runs over REST."""
    import json
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    uri, out = smoke
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "ui.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "ui", "--tracking-uri",
                                 uri, "--port", str(port)], stdout=f, stderr=subprocess.STDOUT,
                                process_group=0)
    base = f"http://127.0.0.1:{port}"
    try:
        # a guard against a UI that never starts, not a timing: one process starting on a
        # machine whose cores other jobs hold can take minutes
        try:
            wait_for_health(base, proc, 300, "the MLflow UI", lambda: ":\n" + log.read_text()[-3000:])
        except AssertionError as e:
            raise AssertionError(f"{e}\n{log.read_text()[-3000:]}") from None

        def post(path, body):
            req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())

        exps = post("/api/2.0/mlflow/experiments/search", {"max_results": 10})["experiments"]
        exp_id = next(e["experiment_id"] for e in exps if e["name"] == "distillray")
        runs = post("/api/2.0/mlflow/runs/search", {
            "experiment_ids": [exp_id],
            "filter": f"tags.`{tracking.TAG_SEARCH}` = 'smoke' and tags.`{tracking.TAG_KIND}` = 'trial'",
            "max_results": 100})["runs"]
        assert len(runs) == len(out.table)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_best_student_is_registered_with_signature_and_predicts(smoke):
    import mlflow
    import pandas as pd

    uri, out = smoke
    client = MlflowClient(uri)
    versions = client.search_model_versions("name='smoke-student'")
    assert len(versions) == 1
    v = versions[0]
    assert float(v.tags["final_best_dev_score"]) == pytest.approx(out.best["best_dev_score"])
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/smoke-student/{v.version}")
    assert model.metadata.signature is not None
    assert [c.name for c in model.metadata.signature.inputs.inputs] == ["text_a"]
    preds = model.predict(pd.DataFrame({"text_a": ["a good movie", "a bad movie"]}))
    assert list(preds.columns) == ["task", "label", "probabilities", "logits"] and len(preds) == 2
    for row in preds.to_dict(orient="records"):
        assert row["task"] == "sst2" and row["label"] in ("negative", "positive")
        assert set(row["probabilities"]) == {"negative", "positive"}
        assert sum(row["probabilities"].values()) == pytest.approx(1.0)
        assert len(row["logits"]) == 2
        # the label is the most likely class, as predict.py says
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)


def test_registered_model_is_served_and_answers_raw_text(smoke, tmp_path):
    """`mlflow models serve -m models:/<name>/<version> --env-manager local` on 127.0.0.1 answers
    a JSON request of raw text with label, probabilities and logits."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    uri, out = smoke
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    log = tmp_path / "serve.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [str(Path(bindir) / "mlflow"), "models", "serve", "-m", "models:/smoke-student/1",
             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
            stdout=f, stderr=subprocess.STDOUT, env=env, process_group=0)
    try:
        deadline = time.time() + 90  # the scoring server's /ping answers 200 with no body
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, "the server exited:\n" + log.read_text()[-2000:]
            assert time.time() < deadline, "no answer in 90 s:\n" + log.read_text()[-2000:]
            time.sleep(1)
        body = json.dumps({"dataframe_records": [{"text_a": "a good movie"},
                                                 {"text_a": "a bad movie"}]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            answer = json.loads(r.read())
        preds = answer["predictions"]
        assert len(preds) == 2
        for p in preds:
            assert p["label"] in ("negative", "positive") and len(p["logits"]) == 2
            assert sum(p["probabilities"].values()) == pytest.approx(1.0)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a fresh environment: mlflow and its dependencies installed
def test_registered_model_serves_from_a_fresh_environment_without_this_repo(smoke, tmp_path):
    """The registered model serves from a new virtual environment holding only what its
    MLmodel's requirements.txt lists (installed with the machine's pip set-up: its cache, its
    local wheels), with this repository neither installed there nor on the path; its answer is
    the one the exported predict.py gives in that environment."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    import mlflow

    uri, _ = smoke
    mlflow.set_tracking_uri(uri)
    model = Path(mlflow.artifacts.download_artifacts("models:/smoke-student/1",
                                                     dst_path=str(tmp_path / "model")))
    reqs = (model / "requirements.txt").read_text().split()
    assert reqs and not any("distillray" in r for r in reqs)
    env_dir = tmp_path / "env"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(env_dir)], check=True, timeout=300)
    py, bindir = env_dir / "bin" / "python", env_dir / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = str(bindir) + os.pathsep + env.get("PATH", "")
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", "-r",
                          str(model / "requirements.txt")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    no_repo = subprocess.run([str(py), "-c", "import orchestrator"], env=env, cwd=tmp_path,
                             capture_output=True, text=True)
    assert no_repo.returncode != 0 and "No module named 'orchestrator'" in no_repo.stderr

    text = "a gripping , funny film"
    ref = subprocess.run([str(py), str(model / "artifacts" / "export" / "predict.py"), text],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    want = json.loads(ref.stdout.strip().splitlines()[-1])

    port = _free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [str(bindir / "mlflow"), "models", "serve", "-m", "models:/smoke-student/1",
             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
            stdout=f, stderr=subprocess.STDOUT, env={**env, "MLFLOW_TRACKING_URI": uri},
            cwd=tmp_path, process_group=0)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, "the server exited:\n" + log.read_text()[-3000:]
            assert time.time() < deadline, "no answer in 120 s:\n" + log.read_text()[-3000:]
            time.sleep(1)
        body = json.dumps({"dataframe_records": [{"text_a": text}]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            got = json.loads(r.read())["predictions"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert len(got) == 1 and got[0]["label"] == want["label"]
    assert got[0]["logits"] == pytest.approx(want["logits"], abs=1e-5)
