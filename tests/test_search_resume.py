"""Kill the search driver with SIGKILL (its whole process group: driver, GCS, raylet, dashboard,
and the Ray workers it started) mid-search, then re-run the same command: the search resumes and
finishes. Two cases:

- Tune's snapshot is fresh (the default: every 2 s). Trial 1 finished; trial 2 was training. The
  new driver skips trial 1 and resumes trial 2 from its last Ray Train checkpoint, in the same
  MLflow child run.
- Tune's snapshot is stale (``TUNE_GLOBAL_CHECKPOINT_S`` huge: only the snapshot at its start).
  Tune still has trial 1 live and has never heard of trial 2. Trial 1 is handed its recorded
  outcome from MLflow instead of training again; trial 2 can never be continued, and its child
  run is closed as failed (interrupted) and soft-deleted: its slot is drawn again.

Both: one parent run throughout; exactly one child run per Tune trial; no child run left RUNNING;
a trial that finished before the kill keeps its run untouched (attempts, start and end time).
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.runtime import tracking
from orchestrator.runtime.faults import kill_tree as _kill_tree
from orchestrator.training.trial_checkpoints import STATE_FILE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 4
# FIFO, not ASHA: every trial trains all its epochs, so the kill points below always come;
# steps_per_epoch makes an epoch last about a second, so a kill lands between epochs
SETS = [f"train.epochs={EPOCHS}", "train.steps_per_epoch=300", "search.scheduler=none",
        "teacher.epochs=2"]


def _command(tmp: Path, samples: int) -> list[str]:
    cmd = [sys.executable, str(REPO / "tune_mkd.py"), "--preset", "smoke"]
    for s in SETS + [f"search.num_samples={samples}"]:
        cmd += ["--set", s]
    return cmd + ["--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}",
                  "--work-root", str(tmp / ".distillray")]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "TUNE_GLOBAL_CHECKPOINT_S")}
    return env | extra


def _trial_runs(db: Path) -> list[dict]:
    """Child runs straight from the sqlite store (read-only; the driver keeps writing)."""
    if not db.exists():
        return []
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            rows = con.execute(
                "select r.run_uuid, r.status, (select value from tags u where u.run_uuid = "
                "r.run_uuid and u.key = ?), (select count(*) from metrics m where "
                "m.run_uuid = r.run_uuid and m.key = 'dev_score') from runs r join tags t on "
                "t.run_uuid = r.run_uuid where t.key = ? and t.value = 'trial'",
                (tracking.TAG_TRIAL, tracking.TAG_KIND)).fetchall()
        finally:
            con.close()
    except sqlite3.Error:  # tables not created yet, or a writer holds the lock
        return []
    return [{"run_id": r[0], "status": r[1], "trial": r[2], "epochs": r[3]} for r in rows]


def _run_until(cmd: list[str], tmp: Path, log: str, kill_when, env: dict[str, str],
               timeout: float = 600):
    """Start the search; SIGKILL it as soon as ``kill_when(child runs)`` holds."""
    with open(tmp / log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=out,
                                stderr=subprocess.STDOUT, process_group=0)
    try:
        deadline = time.time() + timeout
        while True:
            runs = _trial_runs(tmp / "mlflow.db")
            if kill_when(runs):
                return runs
            assert proc.poll() is None, (f"the search ended (rc {proc.returncode}) before the kill "
                                         f"point; runs {runs}; log:\n{_tail(tmp / log)}")
            assert time.time() < deadline, f"no kill point in {timeout:.0f}s; runs {runs}"
            time.sleep(0.3)
    finally:
        _kill_tree(proc)


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:]


def _mid_training(finished: int, tune_dir: Path, ignore: set[str] = frozenset()):
    """At least ``finished`` trials done, and another (not in ``ignore``) with 2 epochs, not all,
    logged, whose run has recorded a checkpoint in storage (what a restarted run resumes from:
    MLflow hears of an epoch before the checkpoint is named): the state file of the trial's own
    checkpoints (the smoke preset trains in the trial's process), or Ray Train's checkpoint
    manager snapshot."""
    def check(runs):
        return (sum(r["status"] == "FINISHED" for r in runs) >= finished
                and any(r["status"] == "RUNNING" and 2 <= r["epochs"] < EPOCHS
                        and r["run_id"] not in ignore
                        and any((tune_dir / f"smoke-{r['trial']}" / f).is_file()
                                for f in (STATE_FILE, "checkpoint_manager_snapshot.json"))
                        for r in runs))
    return check


def _children(client: MlflowClient, exp_id: str) -> dict[str, list]:
    runs = tracking.find_runs(client, exp_id, {tracking.TAG_SEARCH: "smoke",
                                               tracking.TAG_KIND: "trial"})
    out: dict[str, list] = {}
    for r in runs:
        out.setdefault(r.data.tags[tracking.TAG_TRIAL], []).append(r)
    return out


@pytest.mark.parametrize("stale_snapshot, samples", [(False, 4), (True, 3)],
                         ids=["fresh-snapshot", "stale-snapshot"])
def test_killed_search_resumes_without_rerunning_or_losing_trials(tmp_path, stale_snapshot,
                                                                  samples):
    t0 = time.time()
    cmd = _command(tmp_path, samples)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Tune keeps the snapshot period in its saved state: the resumed driver snapshots alike
    env = _env(TUNE_GLOBAL_CHECKPOINT_S="100000") if stale_snapshot else _env()

    # driver 1: killed when trial 1 finished and trial 2 is mid-training
    _run_until(cmd, tmp_path, "driver1.log", _mid_training(1, tmp_path / ".distillray" / "tune"),
               env)
    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name("distillray").experiment_id
    before = {t: rs[0] for t, rs in _children(client, exp_id).items()}
    done = {t: r for t, r in before.items() if r.info.status == "FINISHED"}
    cut = [t for t, r in before.items() if r.info.status == "RUNNING"]
    assert len(done) >= 1 and len(cut) == 1, before
    t1 = time.time()

    # driver 2: the same command runs the search to its end
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=900, process_group=0)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    assert "resuming search smoke" in out
    t2 = time.time()

    parents = tracking.find_runs(client, exp_id, {tracking.TAG_SEARCH: "smoke",
                                                  tracking.TAG_KIND: "search"})
    assert len(parents) == 1, "the parent run is reused on resume"
    assert parents[0].info.status == "FINISHED"
    summary = json.loads(Path(client.download_artifacts(
        parents[0].info.run_id, "search_summary.json", str(tmp_path))).read_text())
    tune_trials = {t["trial_id"]: t for t in summary["trials"]}
    assert len(tune_trials) == samples
    assert all(t["status"] == "DONE" and t["epochs"] == EPOCHS for t in tune_trials.values()), \
        summary["trials"]

    children = _children(client, exp_id)
    assert all(len(rs) == 1 for rs in children.values()), "no duplicate child runs"
    runs = {t: rs[0] for t, rs in children.items()}
    assert set(tune_trials) == set(runs), "one visible child run per trial of the search"
    for t, r in runs.items():
        assert r.info.status != "RUNNING", (t, r.info.status)
        assert r.data.tags[tracking.TAG_PARENT] == parents[0].info.run_id
        if t in tune_trials:
            assert r.info.status == "FINISHED", (t, r.info.status,
                                                 r.data.tags.get(tracking.TAG_ERROR))

    # finished before the kill: never trained again, its run untouched
    for t, old in done.items():
        assert t in tune_trials
        now = runs[t]
        assert now.data.tags["distillray.attempts"] == "1"
        assert (now.info.start_time, now.info.end_time) == (old.info.start_time, old.info.end_time)
        assert "distillray.resumed" not in now.data.tags
        # fresh: Tune skips it; stale: Tune restarts it and it reports its MLflow outcome
        # (off a terminal the search writes its own trial lines: search/trial_lines.py)
        started = re.search(rf"^\[trial\] {t} (re)?started", out, re.M) is not None
        assert started == stale_snapshot, out[-6000:]
        if stale_snapshot:
            assert re.search(rf"^\[trial\] {t} finished \(its MLflow run's outcome", out, re.M)

    (t_cut,) = cut
    if stale_snapshot:  # never recorded by Tune: no driver can continue it; its slot is drawn again
        assert t_cut not in tune_trials
        r = client.get_run(before[t_cut].info.run_id)
        assert r.info.status == "FAILED" and r.info.lifecycle_stage == "deleted"
        assert r.data.tags.get("distillray.interrupted") == "true"
        assert "interrupted" in r.data.tags[tracking.TAG_ERROR]
        assert parents[0].data.tags["distillray.lost_trials"] == t_cut
    else:  # resumed in the same run from its last Ray Train checkpoint
        r = runs[t_cut]
        assert t_cut in tune_trials
        assert r.data.tags.get("distillray.resumed") == "true"
        assert r.data.tags["distillray.attempts"] == "2"
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "dev_score")]
        assert sorted(set(steps)) == list(range(1, EPOCHS + 1)), steps
        # from scratch it would log steps 1, 2, ... again; from the checkpoint at most the epoch
        # the kill cut short
        assert len(steps) <= EPOCHS + 1, steps
    print(f"driver 1 {t1 - t0:.0f}s (killed), driver 2 {t2 - t1:.0f}s")


def test_killed_search_with_draws_waiting_at_the_first_rung_resumes_them(tmp_path):
    """search.startup_rung=synchronous: killed while startup draws wait (paused) at the first
    rung. Tune re-queues every unfinished trial as PENDING on restore; the scheduler puts the
    waiting ones back to wait, so they do not all start at once (on 2 CPUs their Train workers
    would wait for each other for ever), and the rung closes as it would have."""
    cmd = _command(tmp_path, 4)
    cmd += ["--set", "search.scheduler=pareto_asha", "--set", "search.startup_rung=synchronous"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    state_dir = tmp_path / ".distillray" / "tune" / "smoke.scheduler"

    def rungs() -> dict:
        files = list(state_dir.glob("pareto_asha-*.json"))
        try:
            return json.loads(files[0].read_text()) if files else {}
        except ValueError:  # being replaced
            return {}

    _run_until(cmd, tmp_path, "driver1.log", lambda runs: len(rungs().get("waiting", {})) >= 2,
               _env())
    waited = set(rungs()["waiting"])
    res = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True,
                         timeout=900, process_group=0)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    assert "resuming search smoke" in out

    state = rungs()
    assert state["waiting"] == {} and len(state["rungs"]["1"]) == 4
    assert waited - set(state["lost"]) <= set(state["rungs"]["1"])
    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name("distillray").experiment_id
    children = _children(client, exp_id)
    assert all(len(rs) == 1 for rs in children.values())
    parent = tracking.find_runs(client, exp_id, {tracking.TAG_SEARCH: "smoke",
                                                 tracking.TAG_KIND: "search"})[0]
    summary = json.loads(Path(client.download_artifacts(
        parent.info.run_id, "search_summary.json", str(tmp_path))).read_text())
    status = {t["trial_id"]: t["status"] for t in summary["trials"]}
    # exactly num_samples trials in Tune, in MLflow and at the first rung: a draw that started
    # after Tune's last snapshot (every 2 s) is lost with the driver, removed from the rungs and
    # drawn again
    assert len(status) == 4 and set(status) == set(children) and "ERROR" not in status.values()
    assert set(state["rungs"]["1"]) == set(status)
    assert state["cohort"] == [t for t in state["added"] if t in state["cohort"]]
    assert not set(state["lost"]) & set(status)
    # a lost trial that had started has its child run closed and listed on the parent (one added
    # to Tune but never started has none)
    tagged = set(filter(None, parent.data.tags.get("distillray.lost_trials", "").split(",")))
    assert tagged <= set(state["lost"])
    for t, (r,) in children.items():
        assert r.info.status == ("FINISHED" if status[t] == "DONE" else "KILLED"), (t, status[t])
