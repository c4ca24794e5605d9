"""Cache and run keys stay what they were: a full-budget report spans working sessions, and a
changed key would silently train a teacher or a student again. The literals were computed on
fixed inputs; a change that must alter a key bumps that key's version on purpose and updates
the literal here in the same commit.

(Transfer-set, POS-tag and soft-label keys: tests/test_stage_resume.py; bundle keys:
tests/test_teacher_embeddings.py.)"""
from __future__ import annotations

import dataclasses

import pytest

from orchestrator.app.report import ROWS, cell_key, row_config
from orchestrator.config import ConfigError, build_config, with_overrides
from orchestrator.stages.multitask_teacher import multitask_teacher_key
from orchestrator.stages.pipeline import TeacherRef
from orchestrator.stages.teacher import teacher_key
from tasks.data import Example
from tasks.loaders import TaskData
from tasks.registry import get_task

DATA = {"sst2": TaskData(get_task("sst2"), [Example(0, "the cat", None, 1),
                                            Example(1, "a dog", None, 0)],
                         {"dev": [Example(0, "the dog", None, 1)]})}
TEACHERS = {"sst2": TeacherRef("/t/x", "k0", "default", 128)}


def test_teacher_keys_are_unchanged():
    t = build_config({"teacher": {"model": "some/model", "lr": 5e-5, "max_length": 128,
                                  "per_task": {"rte": {"epochs": 10}}}}).teacher
    assert teacher_key(t, get_task("sst2"), "fp0") == "d227937ebb5a5430"
    assert teacher_key(t, get_task("rte"), "fp0") == "5fb0ecf9d294dab3"
    assert multitask_teacher_key(t, DATA) == "fc5d52957238a2d5"


def test_the_multitask_entry_of_per_task_keys_only_the_multitask_teacher():
    """``teacher.per_task.multitask`` is the multi-task teacher's own setting: its key is the
    one the shared setting would give, and the single-task teachers' keys do not move."""
    base = {"model": "some/model", "lr": 5e-5, "max_length": 128}
    own = build_config({"teacher": {**base, "per_task": {"multitask": {"epochs": 2}}}}).teacher
    plain = build_config({"teacher": base}).teacher
    shared = dataclasses.replace(plain, epochs=2)  # as given: per_task values are not coerced
    assert multitask_teacher_key(own, DATA) == multitask_teacher_key(shared, DATA)
    assert multitask_teacher_key(own, DATA) != multitask_teacher_key(plain, DATA)
    assert teacher_key(own, get_task("sst2"), "fp0") == teacher_key(plain, get_task("sst2"), "fp0")


@pytest.mark.parametrize("row,key", [
    ("bilstm_gold", "e521a20a4974b2c0"), ("bilstm_kd", "3e1cdfd972fee622"),
    ("bilstm_soft", "c3bac306c6e16d2a"), ("mkd_bcn", "a20af71faf51ca0a"),
    ("mkd_transformer", "3a2b879f5f0d1803"), ("bcn_kd", "3dcad4d2ff41f42f"),
    ("transformer_kd", "fceda1d909cff2fc")])
def test_report_cell_keys_are_unchanged(row, key):
    base = build_config({"pool": {"precision": "fp32"}, "train": {"patience": 2}})
    r = next(x for x in ROWS if x.id == row)
    assert cell_key(r, row_config(base, r, {}, ["sst2"]), DATA, TEACHERS) == key


def test_mixture_tau_keys_only_a_multitask_teacher_that_sets_it():
    """``teacher.mixture_tau`` shapes the multi-task teacher alone: at its default (1, draws in
    proportion to size) no key moves; set for the multi-task teacher, only that key does; set
    as a shared value, the single-task teachers' keys still do not move."""
    base = {"model": "some/model", "lr": 5e-5, "max_length": 128,
            "per_task": {"rte": {"epochs": 10}}}
    plain = build_config({"teacher": base}).teacher
    own = build_config({"teacher": {**base, "per_task": {**base["per_task"],
                                                         "multitask": {"mixture_tau": 0.5}}}}).teacher
    shared = build_config({"teacher": {**base, "mixture_tau": 0.5}}).teacher
    assert multitask_teacher_key(plain, DATA) == "fc5d52957238a2d5"
    assert multitask_teacher_key(own, DATA) == multitask_teacher_key(shared, DATA) != \
        multitask_teacher_key(plain, DATA)
    for t in (own, shared):
        assert teacher_key(t, get_task("sst2"), "fp0") == "d227937ebb5a5430"


def test_min_epochs_keys_only_the_cells_that_set_it():
    """``train.min_epochs`` unset leaves every report cell key as it was (the pins above); set,
    the key moves. The full budget sets it for CoLA's single-task cells alone (``--row-set``
    wins, capped at the row's epochs)."""
    from orchestrator.app.report.rows import task_config

    base = build_config({"pool": {"precision": "fp32"}, "train": {"patience": 2}})
    r = next(x for x in ROWS if x.id == "bilstm_kd")
    cfg = row_config(base, r, {}, ["sst2"])
    assert cell_key(r, with_overrides(cfg, {"train.min_epochs": 2}), DATA, TEACHERS) != \
        cell_key(r, cfg, DATA, TEACHERS) == "3e1cdfd972fee622"
    cfg = with_overrides(cfg, {"train.epochs": 10})
    assert task_config(cfg, r.id, "sst2", "full", {}).train.min_epochs is None
    assert task_config(cfg, r.id, "cola", "small", {}).train.min_epochs is None
    assert task_config(cfg, r.id, "cola", "full", {}).train.min_epochs == 5
    assert task_config(cfg, r.id, "cola", "full", {}).tasks == ["cola"]
    given = {r.id: {"train.min_epochs": 2}}
    assert task_config(with_overrides(cfg, {"train.min_epochs": 2}), r.id, "cola", "full",
                       given).train.min_epochs == 2
    short = with_overrides(cfg, {"train.epochs": 3})
    assert task_config(short, r.id, "cola", "full", {}).train.min_epochs == 3


@pytest.mark.parametrize("value", [0, 11])
def test_min_epochs_must_lie_within_the_epochs(value):
    with pytest.raises(ConfigError, match=f"train.min_epochs={value} must lie in"):
        build_config({"train": {"epochs": 10, "min_epochs": value}})
