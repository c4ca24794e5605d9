"""A student checkpoint directory's format (orchestrator/training/checkpoint.py): what counts as
a complete checkpoint, which is latest and best, and which files a run logs as its student."""
from __future__ import annotations

import json
from pathlib import Path

from orchestrator.training import checkpoint as ckpt


def _write(d: Path, report: int, score: float | None, *, done: bool = False,
           skip: str | None = None, per_task: tuple[str, ...] = ()) -> Path:
    d.mkdir(parents=True)
    files = {ckpt.MODEL: b"w", ckpt.STUDENT: b"{}", ckpt.VOCAB: b"{}",
             ckpt.STATE: json.dumps({"report": report, "done": done}).encode(),
             ckpt.METRICS: json.dumps({} if score is None else {"dev_score": score}).encode(),
             **{ckpt.task_model(t): b"w" for t in per_task}}
    for name, data in files.items():
        if name != skip:
            (d / name).write_bytes(data)
    return d


def test_an_incomplete_directory_is_not_a_checkpoint(tmp_path):
    assert ckpt.Checkpoint.read(_write(tmp_path / "ok", 2, 0.5, done=True)).report == 2
    for missing in (ckpt.MODEL, ckpt.STUDENT, ckpt.STATE, ckpt.METRICS):
        assert ckpt.Checkpoint.read(_write(tmp_path / missing, 1, 0.5, skip=missing)) is None
    cut = _write(tmp_path / "cut", 1, 0.5)
    (cut / ckpt.METRICS).write_text('{"dev_score": 0.')  # a copy cut short
    assert ckpt.Checkpoint.read(cut) is None
    assert ckpt.Checkpoint.read(tmp_path / "absent") is None


def test_latest_and_best_skip_incomplete_ones_and_ties_go_to_the_earlier_report(tmp_path):
    root = tmp_path / "run"
    _write(root / "checkpoint_000000", 0, 0.7)
    _write(root / "checkpoint_000001", 1, 0.8)
    _write(root / "checkpoint_000002", 2, 0.8)
    _write(root / "checkpoint_000003", 3, float("nan"), done=True)
    _write(root / "checkpoint_000004", 4, 0.9, skip=ckpt.METRICS)  # killed while writing
    latest, best = ckpt.latest_and_best(root)
    assert (latest.report, latest.done) == (3, True)
    assert best.report == 1 and best.dir.name == "checkpoint_000001"
    assert ckpt.latest_and_best(tmp_path / "none") == (None, None)


def test_student_files_are_what_rebuilds_and_describes_the_student(tmp_path):
    d = _write(tmp_path / "c", 0, 0.5, per_task=("rte", "mrpc"))
    (d / ckpt.OPTIMIZER).write_bytes(b"o")
    (d / ckpt.RESUME).write_bytes(b"r")
    names = [p.name for p in ckpt.student_files(d)]
    assert names == [ckpt.MODEL, ckpt.STUDENT, ckpt.VOCAB, ckpt.METRICS,
                     "model-mrpc.safetensors", "model-rte.safetensors"]
