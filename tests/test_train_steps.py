"""The worker loop's steps (``orchestrator/training/worker.py``), each without Ray, on a tiny
generated bundle: setup seeds the student, resume restores what a checkpoint holds, a run cut
after any report ends as one never cut, patience stops stage 1 where it should (also across a
resume), stage 2 reports as further epochs, and a finished run trains nothing."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _support import random_bundle, tiny_config
from orchestrator.training import worker
from orchestrator.training.train import REPORT
from orchestrator.training.trial_checkpoints import TrialCheckpoints
from orchestrator.training.worker import (InProcess, Progress, Reporter, batches, resume,
                                          run_stage1, run_stage2, setup, stage1_reports)

TIMING = ("epoch_seconds", "latency_ms", "checkpoint_path")


class _Killed(Exception):
    pass


def _steps(cfg, bundle, ck: TrialCheckpoints, sent: list, kill_after: int | None = None,
           startup: dict | None = None) -> Progress:
    """The steps in the top function's order, reports sent to ``sent``; ``kill_after``: the
    worker dies once that report is checkpointed (as at the fault point ``trial_reported``)."""
    def send(m):
        sent.append(m)
        if m[REPORT] == kill_after:
            raise _Killed

    w = setup(cfg, bundle)
    with ck.local("latest") as d:
        progress = resume(w, d)
    if progress.done:
        return progress
    data = batches(w, progress)
    report = Reporter(w, InProcess(ck, send))
    try:
        stage1 = run_stage1(w, progress, data, report, startup)
        run_stage2(w, progress, data, stage1, report)
    except _Killed:
        pass
    return progress


def _latest(ck: TrialCheckpoints) -> Path:
    return Path(ck.path) / ck.state()["latest"]


def _same_weights(a, b) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


def _scripted(monkeypatch, scores: list[float]):
    """Dev scores in this order, one per evaluation (then 0.0): patience made predictable."""
    left = list(scores)
    monkeypatch.setattr(worker, "evaluate",
                        lambda model, dev, specs: {"dev_score": left.pop(0) if left else 0.0})


# ---------------------------------------------------------------------------------------------
# setup, batches

def test_setup_builds_the_seeded_student_and_probes_it_on_rank_0(tmp_path):
    b = random_bundle(tmp_path / "b")
    first, second = setup(tiny_config(), b), setup(tiny_config(), b, rank=1, world=2)
    assert _same_weights(first.model, second.model)
    assert set(first.probe) == {"latency_ms", "non_embedding_params", "params"}
    assert second.probe == {}  # only rank 0 measures
    assert first.optimizer.param_groups[0]["lr"] == 0.01
    assert list(first.specs) == ["sst2"] and len(first.train["sst2"]) == 96
    assert not _same_weights(setup(tiny_config(seed=1), b).model, first.model)


def test_batches_shard_the_rows_by_rank(tmp_path):
    b = random_bundle(tmp_path / "b", ("sst2", "cola"))
    w = setup(tiny_config(), b, rank=1, world=2)
    data = batches(w, Progress())
    assert list(data.streams["cola"].shard) == list(range(1, 96, 2))
    assert data.sizes == {"sst2": 96, "cola": 96}
    assert data.steps == 2 * 3  # per task: 96 rows / (16 per batch * 2 workers)
    assert data.probs == pytest.approx({"sst2": 0.5, "cola": 0.5}) and data.labels == {}


# ---------------------------------------------------------------------------------------------
# resume

def test_a_fresh_start_resumes_nothing(tmp_path):
    w = setup(tiny_config(), random_bundle(tmp_path / "b"))
    assert resume(w, None) == Progress()


def test_resume_restores_weights_optimizer_rng_and_streams(tmp_path):
    b = random_bundle(tmp_path / "b")
    ck = TrialCheckpoints(str(tmp_path / "s"), "run")
    _steps(tiny_config(epochs=3), b, ck, [], kill_after=2)
    d = _latest(ck)
    saved = torch.load(d / "resume.pt", weights_only=True)

    w = setup(tiny_config(epochs=3), b)
    torch.manual_seed(123)  # whatever the RNG holds now, resume puts back the checkpoint's
    progress = resume(w, d)
    assert (progress.start, progress.done, progress.stage1_reports) == (2, False, None)
    assert progress.best == json.loads((d / "train_state.json").read_text())["best"]
    from safetensors.torch import load_file
    assert all(torch.equal(v, w.model.state_dict()[k])
               for k, v in load_file(str(d / "model.safetensors")).items())
    opt = torch.load(d / "optimizer.pt", weights_only=True)
    assert all(torch.equal(opt["state"][i]["exp_avg"], w.optimizer.state_dict()["state"][i]["exp_avg"])
               for i in opt["state"])
    assert torch.equal(torch.get_rng_state(), saved["torch_rng"])
    stream = batches(w, progress).streams["sst2"]
    assert stream.state()["rng"] == saved["streams"]["sst2"]["rng"]
    assert all(torch.equal(a, b) for a, b in zip(stream.state()["queue"],
                                                 saved["streams"]["sst2"]["queue"]))


@pytest.mark.parametrize("cut", [1, 3, 4, 5])
def test_a_run_cut_after_any_report_ends_as_one_never_cut(tmp_path, cut):
    """MKD, two reports per epoch, stage 2: cut in stage 1 mid-epoch (1), at an epoch's end
    (3... 4: stage 1's last) and in stage 2 (5); the resumed run reports what the uncut one did
    and ends with the same students, byte for byte."""
    b = random_bundle(tmp_path / "b", ("sst2", "cola"))
    cfg = tiny_config(epochs=2, evals_per_epoch=2, finetune_epochs=2)
    whole, cut_run = TrialCheckpoints(str(tmp_path / "s"), "whole"), TrialCheckpoints(
        str(tmp_path / "s"), "cut")
    ref: list = []
    _steps(cfg, b, whole, ref)
    got: list = []
    _steps(cfg, b, cut_run, got, kill_after=cut)
    assert len(got) == cut
    _steps(cfg, b, cut_run, got)

    def plain(m):
        return {k: v for k, v in m.items() if k not in TIMING}
    assert [plain(m) for m in got] == [plain(m) for m in ref]
    for f in ("model.safetensors", "model-sst2.safetensors", "model-cola.safetensors",
              "train_state.json"):
        assert (_latest(cut_run) / f).read_bytes() == (_latest(whole) / f).read_bytes(), f


# ---------------------------------------------------------------------------------------------
# stage 1: patience, reports

def test_reports_carry_their_number_epoch_and_startup_once(tmp_path):
    sent: list = []
    ck = TrialCheckpoints(str(tmp_path / "s"), "run")
    _steps(tiny_config(epochs=2, evals_per_epoch=2), random_bundle(tmp_path / "b"), ck, sent,
           startup={"startup_seconds": 7.0})
    assert [m[REPORT] for m in sent] == [1, 2, 3, 4]
    assert [m["epoch"] for m in sent] == [0.5, 1.0, 1.5, 2.0]
    assert [m.get("startup_seconds") for m in sent] == [7.0, None, None, None]
    assert all("stage" not in m for m in sent)  # no stage 2: no stage numbers
    assert [m["best_dev_score"] for m in sent] == list(np.maximum.accumulate(
        [m["dev_score"] for m in sent]))
    d = _latest(ck)
    assert sorted(p.name for p in d.iterdir()) == [
        "metrics.json", "model.safetensors", "optimizer.pt", "resume.pt", "student.json",
        "train_state.json"]
    assert json.loads((d / "train_state.json").read_text())["done"] is True
    assert json.loads((d / "metrics.json").read_text())[REPORT] == 4


@pytest.mark.parametrize("evals,scores,stops_after", [
    (1, [0.5, 0.6, 0.6, 0.7], 3),  # patience 1 epoch = 1 report: the first not better
    (2, [0.5, 0.6, 0.6, 0.55, 0.9], 4),  # 1 epoch = 2 reports without a better score
])
def test_patience_stops_stage_1_after_that_many_epochs_without_a_better_score(
        tmp_path, monkeypatch, evals, scores, stops_after):
    _scripted(monkeypatch, scores)
    sent: list = []
    ck = TrialCheckpoints(str(tmp_path / "s"), "run")
    _steps(tiny_config(epochs=5, patience=1, evals_per_epoch=evals), random_bundle(tmp_path / "b"), ck, sent)
    assert [m["dev_score"] for m in sent] == scores[:stops_after]
    state = json.loads((_latest(ck) / "train_state.json").read_text())
    assert state == {"report": stops_after - 1, "best": 0.6, "bad_epochs": evals, "done": True}


@pytest.mark.parametrize("evals", [1, 2])
def test_patience_counts_only_after_min_epochs(tmp_path, monkeypatch, evals):
    """Scores flat at the majority class for the first epochs: patience 1 alone would stop at
    the second report; with min_epochs 3, reports up to epoch 3 count no bad epoch, and after
    it patience stops the run as before (here: one epoch after the best, at epoch 4)."""
    scores = [0.0] * (3 * evals - 1) + [0.2] + [0.1] * evals + [0.9] * 10
    _scripted(monkeypatch, scores)
    sent: list = []
    ck = TrialCheckpoints(str(tmp_path / "s"), "run")
    _steps(tiny_config(epochs=8, patience=1, min_epochs=3, evals_per_epoch=evals),
           random_bundle(tmp_path / "b"), ck, sent)
    assert [m["dev_score"] for m in sent] == scores[:4 * evals]
    state = json.loads((_latest(ck) / "train_state.json").read_text())
    assert state == {"report": 4 * evals - 1, "best": 0.2, "bad_epochs": evals, "done": True}


def test_min_epochs_past_a_flat_start_trains_min_plus_patience_epochs(tmp_path, monkeypatch):
    _scripted(monkeypatch, [0.0] * 20)
    sent: list = []
    _steps(tiny_config(epochs=10, patience=2, min_epochs=5), random_bundle(tmp_path / "b"),
           TrialCheckpoints(str(tmp_path / "s"), "run"), sent)
    assert len(sent) == 7  # without min_epochs: 3 (the first report, then 2 without a better)


def test_resumed_after_patience_stopped_stage_1_goes_on_with_stage_2(tmp_path, monkeypatch):
    """Killed right after stage 1's early stop: the resumed run makes no stage-1 report and
    numbers stage 2's epochs on from where stage 1 stopped."""
    _scripted(monkeypatch, [0.5, 0.6, 0.6])
    b = random_bundle(tmp_path / "b", ("sst2", "cola"))
    cfg = tiny_config(epochs=6, patience=1, finetune_epochs=2)
    ck = TrialCheckpoints(str(tmp_path / "s"), "run")
    sent: list = []
    _steps(cfg, b, ck, sent, kill_after=3)
    assert [m["stage"] for m in sent] == [1, 1, 1]

    w = setup(cfg, b)
    with ck.local("latest") as d:
        progress = resume(w, d)
    assert (progress.start, progress.bad_epochs, progress.done) == (3, 1, False)
    assert stage1_reports(cfg.train, progress) == 3
    data = batches(w, progress)
    report = Reporter(w, InProcess(ck, sent.append))
    assert run_stage1(w, progress, data, report) == 3 and len(sent) == 3
    run_stage2(w, progress, data, 3, report)
    assert [(m[REPORT], m["epoch"], m["stage"]) for m in sent[3:]] == [(4, 4, 2), (5, 5, 2)]
    assert json.loads((_latest(ck) / "train_state.json").read_text())["stage1_reports"] == 3


# ---------------------------------------------------------------------------------------------
# stage 2, the end

def test_stage_2_reports_as_further_epochs_with_each_tasks_student(tmp_path):
    sent: list = []
    ck = TrialCheckpoints(str(tmp_path / "s"), "run")
    _steps(tiny_config(epochs=2, evals_per_epoch=2, finetune_epochs=2),
           random_bundle(tmp_path / "b", ("sst2", "cola")), ck, sent)
    assert [(m[REPORT], m["epoch"], m["stage"]) for m in sent] == [
        (1, 0.5, 1), (2, 1.0, 1), (3, 1.5, 1), (4, 2.0, 1), (5, 3, 2), (6, 4, 2)]
    assert {"sst2_train_loss", "cola_train_loss", "sst2_score", "cola_score"} <= set(sent[-1])
    d = _latest(ck)
    assert (d / "model-sst2.safetensors").is_file() and (d / "model-cola.safetensors").is_file()
    assert not (d / "optimizer.pt").exists()  # stage 2's optimizers are in resume.pt
    assert set(torch.load(d / "resume.pt", weights_only=True)["optimizers"]) == {"sst2", "cola"}
    assert json.loads((d / "student.json").read_text())["finetuned_tasks"] == ["cola", "sst2"]
    state = json.loads((d / "train_state.json").read_text())
    assert (state["report"], state["stage1_reports"], state["done"]) == (5, 4, True)
    assert state["best"] == max(m["dev_score"] for m in sent)


def test_a_done_checkpoint_trains_nothing(tmp_path, monkeypatch):
    """The top function itself (local mode) on a finished run: resumes, finds it done, and
    returns before anything trains or reports."""
    import ray.train

    b = random_bundle(tmp_path / "b")
    cfg = tiny_config(epochs=2)
    ck = TrialCheckpoints(str(tmp_path / "s"), "run")
    _steps(cfg, b, ck, [])
    before = {p.name: p.read_bytes() for p in _latest(ck).iterdir()}
    state = ck.state()

    def no_report(metrics):
        raise AssertionError(f"reported {metrics}")
    monkeypatch.setattr(ray.train, "report", no_report)
    worker.train_loop_per_worker({
        "experiment": cfg.to_dict(), "bundle": str(b), "run_id": None, "tracking_uri": None,
        "tasks": None, "labeler": None, "started_at": None,
        "checkpoints": {"storage": str(tmp_path / "s"), "name": "run"}})
    assert ck.state() == state
    assert {p.name: p.read_bytes() for p in _latest(ck).iterdir()} == before


def test_the_top_function_resumes_a_cut_run_as_the_steps_do(tmp_path, monkeypatch):
    """``train_loop_per_worker`` in local mode (the report replaced): cut after report 2 of
    3, run again, the same students as the steps' uncut run."""
    import ray.train

    b = random_bundle(tmp_path / "b")
    cfg = tiny_config(epochs=3)
    ref = TrialCheckpoints(str(tmp_path / "s"), "ref")
    _steps(cfg, b, ref, [])
    sent: list = []

    def report(metrics):
        sent.append(metrics)
        if metrics[REPORT] == 2 and len(sent) == 2:
            raise _Killed
    monkeypatch.setattr(ray.train, "report", report)
    loop_cfg = {"experiment": cfg.to_dict(), "bundle": str(b), "run_id": None,
                "tracking_uri": None, "tasks": None, "labeler": None, "started_at": 1.0,
                "checkpoints": {"storage": str(tmp_path / "s"), "name": "top"}}
    with pytest.raises(_Killed):
        worker.train_loop_per_worker(loop_cfg)
    worker.train_loop_per_worker(loop_cfg)
    assert [m[REPORT] for m in sent] == [1, 2, 3]
    assert [("startup_seconds" in m) for m in sent] == [True, False, True]  # once per start
    top = TrialCheckpoints(str(tmp_path / "s"), "top")
    assert (_latest(top) / "model.safetensors").read_bytes() == \
        (_latest(ref) / "model.safetensors").read_bytes()


def test_paused_at_a_rung_then_started_again_ends_as_a_run_never_paused(tmp_path, monkeypatch):
    """``pause_after`` (a grid's rung): the loop stops unfinished after that many reports, a
    second call with it trains nothing, and a call without it trains on to the same student as
    a run never paused."""
    import ray.train

    b = random_bundle(tmp_path / "b")
    cfg = tiny_config(epochs=3)
    ref = TrialCheckpoints(str(tmp_path / "s"), "ref")
    _steps(cfg, b, ref, [])
    sent: list = []
    monkeypatch.setattr(ray.train, "report", sent.append)
    loop_cfg = {"experiment": cfg.to_dict(), "bundle": str(b), "run_id": None,
                "tracking_uri": None, "tasks": None, "labeler": None, "started_at": None,
                "checkpoints": {"storage": str(tmp_path / "s"), "name": "rung"},
                "pause_after": 1}
    worker.train_loop_per_worker(loop_cfg)
    rung = TrialCheckpoints(str(tmp_path / "s"), "rung")
    assert [m[REPORT] for m in sent] == [1]
    assert json.loads((_latest(rung) / "train_state.json").read_text())["done"] is False
    worker.train_loop_per_worker(loop_cfg)  # the rung again: already there
    assert len(sent) == 1
    worker.train_loop_per_worker({**loop_cfg, "pause_after": None})
    assert [m[REPORT] for m in sent] == [1, 2, 3]
    assert json.loads((_latest(rung) / "train_state.json").read_text())["done"] is True
    assert (_latest(rung) / "model.safetensors").read_bytes() == \
        (_latest(ref) / "model.safetensors").read_bytes()


def test_run_stage1_until_returns_none_when_it_paused_and_the_count_when_it_ended(tmp_path):
    b = random_bundle(tmp_path / "b")
    cfg = tiny_config(epochs=2)
    ck = TrialCheckpoints(str(tmp_path / "s"), "run")
    w = setup(cfg, b)
    progress = Progress()
    data = batches(w, progress)
    sent: list = []
    report = Reporter(w, InProcess(ck, sent.append))
    assert run_stage1(w, progress, data, report, until=1) is None and len(sent) == 1
    progress.start = 1
    assert run_stage1(w, progress, data, report, until=5) == 2 and len(sent) == 2


# ---------------------------------------------------------------------------------------------
# the report step

class _Client:
    def __init__(self):
        self.batches = []

    def log_batch(self, run_id, metrics):
        self.batches.append((run_id, [(m.key, m.value, m.step) for m in metrics]))


class _Sink:
    def __init__(self):
        self.kept, self.sent = [], []

    def keep(self, metrics, ckpt_dir, r):
        self.kept.append((dict(metrics), None if ckpt_dir is None else
                          sorted(p.name for p in ckpt_dir.iterdir()), r))

    def send(self, metrics):
        self.sent.append(metrics)


@pytest.mark.parametrize("rank", [0, 1])
def test_reporter_logs_and_checkpoints_on_rank_0_only(tmp_path, rank):
    w = setup(tiny_config(), random_bundle(tmp_path / "b"), rank=rank, world=2)
    sink, client = _Sink(), _Client()
    Reporter(w, sink, client if rank == 0 else None, "run-1")(
        2, {"epoch": 3, "train_loss": 0.5, "dev_score": 0.7, "best_dev_score": 0.8},
        {"best": 0.8, "bad_epochs": 1, "done": False}, optimizer=w.optimizer)
    metrics, files, r = sink.kept[0]
    assert metrics[REPORT] == 3 and r == 2
    if rank == 1:  # no checkpoint, nothing sent after (Train has the report already)
        assert files is None and sink.sent == [] and client.batches == []
        return
    assert files == ["metrics.json", "model.safetensors", "optimizer.pt", "student.json",
                     "train_state.json"]
    assert sink.sent == [metrics]
    (run_id, logged), = client.batches
    # the scores first (MLflow lists metrics in the order first logged), as step report + 1
    assert run_id == "run-1" and [k for k, _, _ in logged][:2] == ["best_dev_score", "dev_score"]
    assert {s for _, _, s in logged} == {3} and REPORT not in {k for k, _, _ in logged}


# ---------------------------------------------------------------------------------------------
# how distill_one's run ended

def test_distilled_gives_the_last_and_best_checkpoint_in_either_mode(tmp_path):
    """Local mode: from the trial's TrialCheckpoints; Train workers: from Train's Result."""
    from orchestrator.training.distill import Distilled

    sent: list = []
    ck = TrialCheckpoints(str(tmp_path / "s"), "run")
    _steps(tiny_config(epochs=3), random_bundle(tmp_path / "b"), ck, sent)
    with Distilled(None, str(tmp_path / "s"), "run", local=True).checkpoint_dirs() as (last, best):
        assert json.loads((last / "metrics.json").read_text())[REPORT] == 3
        best_report = max(sent, key=lambda m: (m["dev_score"], -m[REPORT]))[REPORT]
        assert json.loads((best / "metrics.json").read_text())[REPORT] == best_report

    class _Ckpt:
        def __init__(self, d):
            self.d = d

        def as_directory(self):
            return contextlib.nullcontext(str(self.d))

    class _Result:
        checkpoint = _Ckpt(tmp_path / "last")

        def get_best_checkpoint(self, metric, mode):
            assert (metric, mode) == ("dev_score", "max")
            return _Ckpt(tmp_path / "best")

    with Distilled(_Result(), "", "run", local=False).checkpoint_dirs() as dirs:
        assert dirs == (tmp_path / "last", tmp_path / "best")
    _Result.checkpoint = None
    _Result.get_best_checkpoint = lambda self, metric, mode: None
    with Distilled(_Result(), "", "run", local=False).checkpoint_dirs() as dirs:
        assert dirs == (None, None)  # no report: nothing to log but the curve
