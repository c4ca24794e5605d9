"""A report killed in every stage (teacher fine-tuning, augmentation, labeling, a student's
training) and started again with the same command ends with the same table as a report never
interrupted, and computes nothing twice: the teacher resumes from its checkpoint, the labels
from the shards written, the student from its last reported epoch in the same MLflow run.

Runs the CLI in subprocesses (SIGKILL of the whole process tree, as at the end of a working
session) on the ``report_smoke`` preset: one generated task, the teacher and BiLSTM_SOFT rows.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.runtime import faults

pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).resolve().parents[1]
ROWS = "teacher,bilstm_soft"


def _command(root: Path, nltk: Path) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", "report", "--preset", "report_smoke",
            "--tasks", "sst2", "--rows", ROWS, "--name", "resume-test",
            "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}", "--work-root",
            str(root / "work"), "--out", str(root / "report.md"), "--json",
            str(root / "report.json"), "--repeats", "2", "--repeats-64", "1",
            # a checkpoint after every teacher step, so the kill lands after one
            "--set", "teacher.checkpoint_minutes=1e-6", "--set", "teacher.epochs=3",
            "--set", f"augment.nltk_data={nltk}", "--set", "train.epochs=3",
            # the student on a Ray Train worker, as the report preset trains it (report_smoke
            # trains in the report's own process; tests/test_report.py covers that path)
            "--set", "train.num_workers=1"]


def _run(root: Path, nltk: Path, fault: str | None, timeout: float = 400) -> bool:
    """Run the report; with ``fault`` armed, SIGKILL its tree once the point is reached.
    Returns whether it was killed there."""
    root.mkdir(parents=True, exist_ok=True)
    mark = root / f"fault-{fault}.mark"
    env = {k: v for k, v in os.environ.items() if k not in (faults.ENV, faults.MARK_ENV)}
    env |= {"RAY_ADDRESS": "local", "PYTHONPATH": str(REPO)}
    if fault:
        env |= {faults.ENV: fault, faults.MARK_ENV: str(mark)}
    with open(root / "log.txt", "a") as out:
        out.write(f"\n=== run, fault {fault}\n")
        out.flush()
        proc = subprocess.Popen(_command(root, nltk), cwd=root, env=env, stdout=out,
                                stderr=subprocess.STDOUT, process_group=0)
    deadline = time.time() + timeout
    try:
        while proc.poll() is None:
            if fault and mark.exists():
                time.sleep(0.5)  # let the held process settle at the point
                faults.kill_tree(proc)
                return True
            if time.time() > deadline:
                raise TimeoutError(f"no end in {timeout:.0f} s: see {root / 'log.txt'}")
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            faults.kill_tree(proc)
    assert proc.returncode == 0, (root / "log.txt").read_text()[-3000:]
    return False


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_nltk_data):
    ref = tmp_path_factory.mktemp("reference")
    _run(ref, tiny_nltk_data, None)
    killed = tmp_path_factory.mktemp("killed")
    stages = {}
    for fault in ("teacher_finetune", "augment_chunk", "labeling", "trial_reported"):
        stages[fault] = _run(killed, tiny_nltk_data, fault)
    _run(killed, tiny_nltk_data, None)
    return {"ref": ref, "killed": killed, "stages": stages}


def test_every_stage_was_interrupted(runs):
    assert runs["stages"] == {"teacher_finetune": True, "augment_chunk": True, "labeling": True,
                              "trial_reported": True}


def test_same_table_as_an_uninterrupted_report(runs):
    a = json.loads((runs["ref"] / "report.json").read_text())
    b = json.loads((runs["killed"] / "report.json").read_text())
    assert [(c["row"], c["task"]) for c in a["cells"]] == [("teacher", "sst2"),
                                                          ("bilstm_soft", "sst2")]
    def strip(cells):
        return [{k: c[k] for k in ("row", "task", "score", "metrics")} for c in cells]
    assert strip(b["cells"]) == strip(a["cells"])


def test_teacher_resumed_from_its_checkpoint(runs):
    from orchestrator.teachers.teacher_model import RUN_RECORD_FILE

    infos = [json.loads(p.read_text()) for p in
             (runs["killed"] / "work" / "teachers").glob(f"*/{RUN_RECORD_FILE}")]
    assert len(infos) == 1
    assert len(infos[0]["resumed_at"]) == 1 and infos[0]["resumed_at"][0] > 0
    assert not (runs["killed"] / "work" / "teachers" / ".partial").exists()
    # the teacher's folder is written once trained: the kill left no half-made one behind
    assert not list((runs["killed"] / "work" / "teachers").glob(".*.tmp-*"))


def test_student_resumed_in_its_run_and_no_epoch_ran_twice(runs):
    from mlflow.tracking import MlflowClient

    from orchestrator.app.report import KIND_TRAIN
    from orchestrator.runtime import tracking

    client = MlflowClient(f"sqlite:///{runs['killed'] / 'mlflow.db'}")
    exp = client.get_experiment_by_name("distillray")
    train = tracking.find_runs(client, exp.experiment_id, {tracking.TAG_KIND: KIND_TRAIN})
    assert len(train) == 1, "the killed student's run is resumed, not replaced"
    run = train[0]
    assert run.info.status == "FINISHED" and run.data.tags.get("distillray.resumed") == "1"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch_seconds")]
    assert sorted(steps) == sorted(set(steps)) and len(steps) == 3, steps
    log = (runs["killed"] / "log.txt").read_text()
    assert "resuming after report 1 " in log, "from the checkpoint of its first epoch"
