"""The tuned rows' learning-rate grid with a rung (``report.GRID_RUNG``): every learning rate
trains the rung's reports, the best dev score there picks one, only that one trains on, and the
cell records how it was picked. ``_train_point`` is replaced by a script (no Ray, no data); the
rung's score is read from a real MLflow run's history."""
from __future__ import annotations

import json

import numpy as np
import pytest

from orchestrator.app import report
from orchestrator.app.report import students
from orchestrator.config import build_config


class _Client:
    def __init__(self):
        self.tags, self.status = {}, {}

    def get_run(self, run_id):
        class _R:
            class data:
                params: dict = {}
        return _R

    def log_batch(self, run_id, metrics=(), params=()):
        pass

    def set_tag(self, run_id, k, v):
        self.tags.setdefault(run_id, {})[k] = v

    def set_terminated(self, run_id, status):
        self.status[run_id] = status


class _Ctx:
    def __init__(self):
        self.client, self.notes, self.started = _Client(), [], []

    def finished(self, *a, **k):
        return None

    def note(self, msg):
        self.notes.append(msg)

    def start(self, kind, row, task, key, extra=None):
        self.started.append((kind, row.id, task, key, extra))
        return f"cell-{len(self.started)}"


@pytest.fixture
def scripted(monkeypatch):
    """Rung scores 0.70 / 0.80 / 0.75 for lr 5e-4 / 1e-3 / 2e-3; the winner ends at 0.86."""
    calls = []
    rung_scores = {5e-4: 0.70, 1e-3: 0.80, 2e-3: 0.75}

    def train_point(ctx, row, cfg, data, refs, task, key, pause_after=None):
        lr = cfg.train.lr
        calls.append((lr, pause_after))
        score = rung_scores[lr] if pause_after else 0.86
        return students._Trained(f"run-{lr:g}", {"dev_score": score, f"{task}_score": score,
                                                 "sst2_accuracy": score, "epoch": 1 if pause_after
                                                 else 4, "epochs_run": 6},
                                 {"sst2": 100.0}, 10.0 if pause_after else 60.0,
                                 "paused" if pause_after else "trained")

    # patched where _single_cell looks them up
    monkeypatch.setattr(students, "_train_point", train_point)
    monkeypatch.setattr(students, "cell_key", lambda row, cfg, data, refs: f"k{cfg.train.lr:g}")
    return calls


def _cell(rung):
    row = next(r for r in report.ROWS if r.id == "bilstm_soft")
    cfg = build_config({"train": {"patience": 2, "epochs": 10}})
    ctx = _Ctx()
    cell = students._single_cell(ctx, row, cfg, "sst2", {"sst2": None}, {"sst2": None},
                                 (5e-4, 1e-3, 2e-3), rung)
    return ctx, cell


def test_every_lr_trains_the_rung_then_only_the_best_trains_on(scripted):
    ctx, cell = _cell(1)
    assert scripted == [(5e-4, 1), (1e-3, 1), (2e-3, 1), (1e-3, None)]
    assert cell.tuning["lr"] == 1e-3 and cell.tuning["rung"] == 1
    assert cell.tuning["rung_scores"] == [0.70, 0.80, 0.75]
    assert cell.metrics["score"] == pytest.approx(0.86)
    assert cell.train_run_id == "run-0.001" and cell.status == "trained"
    # every run's seconds count: the losers' rung and the winner's whole training
    assert cell.train_seconds == {"run-0.0005": 10.0, "run-0.001": 60.0, "run-0.002": 10.0}
    assert json.loads(ctx.started[0][4]["distillray.tuning"])["rung_scores"] == [0.7, 0.8, 0.75]


def test_the_rung_is_part_of_the_cell_key_and_no_rung_trains_every_point_through(scripted):
    _, with_rung = _cell(1)
    n = len(scripted)
    _, without = _cell(None)
    assert scripted[n:] == [(5e-4, None), (1e-3, None), (2e-3, None)]
    assert with_rung.config_key != without.config_key
    assert without.tuning["rung"] is None and without.tuning["grid_scores"] == [0.86] * 3


def test_the_rung_score_is_the_best_dev_score_within_its_reports(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    exp = client.create_experiment("x", artifact_location=str(tmp_path / "a"))
    rid = client.create_run(exp).info.run_id
    for step, (score, epoch) in enumerate([(0.6, 1), (0.7, 2), (0.9, 3)], start=1):
        client.log_metric(rid, "dev_score", score, step=step)
        client.log_metric(rid, "epoch", epoch, step=step)
    assert students._rung_best(client, rid, 2) == {"dev_score": 0.7, "epoch": 2}
    assert students._rung_best(client, rid, 3)["dev_score"] == 0.9
    assert students._rung_best(client, client.create_run(exp).info.run_id, 1) == {
        "dev_score": -np.inf}


@pytest.mark.slow
def test_a_real_report_with_a_rung_pauses_the_loser_and_resumes_the_winner(tmp_path,
                                                                            monkeypatch):
    """``report_smoke``, row 3 on SST-2, two learning rates, a rung of 1 report: the loser's
    train run ends KILLED at report 1, the winner's run is reopened once and finishes, and a
    second call trains nothing."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setitem(report.GRID_RUNG, "small", 1)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    cfg = report.resolve_report("report_smoke", "small", ["sst2"], [], extra={
        "tracking.uri": uri, "work_root": str(tmp_path / ".distillray")})

    def call():
        return report.run_report(cfg, name="rung", rows=["bilstm_kd"], lr_grid=(1e-3, 3e-3),
                                 repeats=(2, 1), warmup=0, out=tmp_path / "r.md",
                                 log=lambda *_: None)

    first = call()
    assert (first.trained, first.failed) == (1, 0)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("distillray").experiment_id
    runs = client.search_runs([exp], "tags.`distillray.kind` = 'report-train'")
    by_status = {r.info.status: r for r in runs}
    assert sorted(by_status) == ["FINISHED", "KILLED"] and len(runs) == 2
    loser, winner = by_status["KILLED"], by_status["FINISHED"]
    assert loser.data.tags["distillray.paused_at"] == "1"
    assert winner.data.tags.get("distillray.resumed") == "1"
    assert [m.step for m in client.get_metric_history(loser.info.run_id, "dev_score")] == [1]
    steps = [m.step for m in client.get_metric_history(winner.info.run_id, "dev_score")]
    assert steps == sorted(set(steps)) and steps[0] == 1 and len(steps) > 1  # none twice
    cell = first.cells.iloc[0]
    assert cell["tuning"]["rung"] == 1 and cell["train_run_id"] == winner.info.run_id
    assert float(winner.data.params["train.lr"]) == cell["tuning"]["lr"]

    again = call()
    assert (again.trained, again.reused) == (0, 1)


def test_with_min_epochs_the_rung_is_taken_where_patience_starts_counting(scripted):
    row = next(r for r in report.ROWS if r.id == "bilstm_soft")
    cfg = build_config({"train": {"patience": 2, "epochs": 10, "min_epochs": 3}})
    cell = students._single_cell(_Ctx(), row, cfg, "sst2", {"sst2": None}, {"sst2": None},
                                 (5e-4, 1e-3, 2e-3), 1)
    assert [p for _, p in scripted] == [3, 3, 3, None]
    assert cell.tuning["rung"] == 3 and cell.tuning["min_epochs"] == 3
    from orchestrator.app.report.table import _tuning_note
    note = _tuning_note([row], [cell], (5e-4, 1e-3, 2e-3), cfg, 1)
    assert "On sst2, patience starts counting (and a grid's rung is taken) at epoch 3." in note
