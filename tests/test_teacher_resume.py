"""Teacher fine-tuning killed mid-way resumes from its checkpoint and ends with the same teacher,
step for step, as a run never interrupted; per-task settings and best-epoch selection shape the
cache key; how long a run took stays out of the teacher's identity. A tiny random teacher on
generated data, no Ray."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from orchestrator.config import ConfigError, TeacherConfig, build_config
from orchestrator.runtime import faults
from orchestrator.stages.teacher import (TRAIN_INFO_FILE, finetune_teacher, teacher_key,
                                         train_seconds)
from orchestrator.teachers.teacher_model import RUN_RECORD_FILE, teacher_identity
from tasks.generated import generate_task_data
from tasks.registry import get_task

pytestmark = pytest.mark.timeout(300)


class Killed(Exception):
    """Stands in for SIGKILL: raised from the fault point inside the step loop."""


def _cfg(**kw) -> TeacherConfig:
    base = dict(model="random:tiny", epochs=3.0, lr=1e-3, batch_size=16, max_length=32,
                checkpoint_minutes=1e-6)  # a checkpoint after every step
    return TeacherConfig(**{**base, **kw})


def _count_steps(monkeypatch, kill_at: int | None = None) -> list[int]:
    """Counts the optimizer steps of this process; raises Killed at step ``kill_at``."""
    steps = [0]

    def point(name: str) -> None:
        if name == "teacher_finetune":
            steps[0] += 1
            if steps[0] == kill_at:
                raise Killed()
    monkeypatch.setattr(faults, "point", point)
    return steps


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def task_data():
    torch.set_num_threads(1)
    return {t: generate_task_data(get_task(t), 96, 32, 0) for t in ("sst2", "mrpc")}


def test_single_task_teacher_resumes_exactly(tmp_path, monkeypatch, task_data):
    d = task_data["sst2"]
    dev = next(iter(d.dev.values()))
    cfg = _cfg()
    steps = _count_steps(monkeypatch)
    ref = finetune_teacher(cfg, d.task, d.train, dev, tmp_path / "a", "fp", log=lambda m: None)
    total = steps[0]
    assert total == 3 * 6  # 96 examples, batch 16, 3 epochs

    logs: list[str] = []
    steps = _count_steps(monkeypatch, kill_at=8)
    with pytest.raises(Killed):
        finetune_teacher(cfg, d.task, d.train, dev, tmp_path / "b", "fp", log=logs.append)
    teachers = tmp_path / "b" / "teachers"
    assert not (teachers / ref.key).exists(), "a killed fine-tune never looks finished"
    assert (teachers / ".partial" / ref.key / "checkpoint.pt").is_file()

    steps = _count_steps(monkeypatch)
    res = finetune_teacher(cfg, d.task, d.train, dev, tmp_path / "b", "fp", log=logs.append)
    assert steps[0] == total - 8, "only the steps after the checkpoint run again"
    assert any("resuming at step 8 of 18" in m for m in logs), logs
    assert res.key == ref.key and res.metrics == ref.metrics
    a, b = _weights(ref.path), _weights(res.path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the same weights label into the same soft-label cache, however the run went
    assert teacher_identity(res.path) == teacher_identity(ref.path)
    run = json.loads((res.path / RUN_RECORD_FILE).read_text())
    assert run["resumed_at"] == [8] and run["seconds"] > 0
    assert json.loads((ref.path / RUN_RECORD_FILE).read_text())["resumed_at"] == []
    assert train_seconds(res.path) == run["seconds"]
    info = json.loads((res.path / TRAIN_INFO_FILE).read_text())
    assert info["steps"] == total and "seconds" not in info and "resumed_at" not in info
    assert [h["step"] for h in info["history"]] == [6, 12, 18]
    assert info["best_step"] in (6, 12, 18)
    assert max(h["score"] for h in info["history"]) == pytest.approx(res.metrics["score"])
    assert not (teachers / ".partial").exists(), "the checkpoint goes once the teacher is saved"


def test_multitask_teacher_resumes_exactly(tmp_path, monkeypatch, task_data):
    from orchestrator.stages.multitask_teacher import refine_multitask_teacher

    cfg = _cfg(epochs=2.0, multitask=True)
    steps = _count_steps(monkeypatch)
    ref = refine_multitask_teacher(cfg, task_data, tmp_path / "a", log=lambda m: None)
    total = steps[0]
    steps = _count_steps(monkeypatch, kill_at=total // 2 + 1)
    with pytest.raises(Killed):
        refine_multitask_teacher(cfg, task_data, tmp_path / "b", log=lambda m: None)
    steps = _count_steps(monkeypatch)
    res = refine_multitask_teacher(cfg, task_data, tmp_path / "b", log=lambda m: None)
    assert steps[0] == total - (total // 2 + 1)
    assert res.metrics == ref.metrics
    assert teacher_identity(res.path) == teacher_identity(ref.path)
    a = load_file(str(ref.path / "heads.safetensors"))
    b = load_file(str(res.path / "heads.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_per_task_settings_apply_to_their_task_only():
    cfg = build_config({"teacher": {"lr": 5e-5, "per_task": {"rte": {"epochs": 10, "lr": 3e-5}}}})
    t = cfg.teacher
    assert t.for_task("rte").epochs == 10 and t.for_task("rte").lr == 3e-5
    assert t.for_task("sst2") == TeacherConfig(**{**vars(t), "per_task": {}})
    sst2, rte = get_task("sst2"), get_task("rte")
    # a task's key depends on its own settings only, and per-task settings of other tasks
    # (or how often checkpoints are written) leave it unchanged
    plain = build_config({"teacher": {"lr": 5e-5}}).teacher
    assert teacher_key(t, sst2, "fp") == teacher_key(plain, sst2, "fp")
    assert teacher_key(t, rte, "fp") != teacher_key(plain, rte, "fp")
    assert teacher_key(t, rte, "fp") == teacher_key(
        TeacherConfig(**{**vars(plain), "epochs": 10, "lr": 3e-5}), rte, "fp")
    often = TeacherConfig(**{**vars(plain), "checkpoint_minutes": 1.0})
    assert teacher_key(often, sst2, "fp") == teacher_key(plain, sst2, "fp")
    last = TeacherConfig(**{**vars(plain), "keep_best_epoch": False})
    assert teacher_key(last, sst2, "fp") != teacher_key(plain, sst2, "fp")


@pytest.mark.parametrize("per_task,match", [
    ({"rte": {"max_length": 256}}, "max_length cannot differ per task"),
    ({"rte": {"epochs": 0}}, "epochs=0 is not a valid epochs"),
    ({"rte": {"batch_size": 8.5}}, "batch_size=8.5"),
    ({"rte": 10}, "mapping"),
    ({"multitask": {"mixture_tau": 0}}, "mixture_tau=0 is not a valid mixture_tau"),
])
def test_bad_per_task_settings_are_refused(per_task, match):
    with pytest.raises(ConfigError, match=match):
        build_config({"teacher": {"per_task": per_task}})


def test_checkpoint_minutes_must_be_positive():
    with pytest.raises(ConfigError, match="checkpoint_minutes"):
        build_config({"teacher": {"checkpoint_minutes": 0}})


def test_mixture_tau_must_be_positive():
    with pytest.raises(ConfigError, match="teacher.mixture_tau=-1.0 must be > 0"):
        build_config({"teacher": {"mixture_tau": -1.0}})


def test_teacher_saved_before_the_run_record_keeps_its_identity_and_seconds(tmp_path):
    """A teacher dir from before the run record: its seconds are read from train_info.json,
    and its identity (so its soft-label cache) is what it was."""
    d = tmp_path / "old"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"weights")
    (d / TRAIN_INFO_FILE).write_text(json.dumps({"steps": 4, "seconds": 12.5, "resumed_at": []}))
    before = teacher_identity(d)
    assert train_seconds(d) == 12.5
    (d / RUN_RECORD_FILE).write_text(json.dumps({"seconds": 99.0, "resumed_at": [2]}))
    assert teacher_identity(d) == before, "the run record is not part of the identity"
    assert train_seconds(d) == 99.0
    (d / TRAIN_INFO_FILE).write_text(json.dumps({"steps": 5}))
    assert teacher_identity(d) != before, "what the training did is"
    (d / RUN_RECORD_FILE).unlink()
    assert train_seconds(d) is None
