"""The MKD comparison's parts, without Ray: a multi-task teacher refined per task, the encoder a
joint Transformer starts from, each joint task's own best report, seeds (mean, std, ties)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from orchestrator.app.report import ROWS, build_table, format_markdown, row_config, select_rows
from orchestrator.app.report.rows import Cell, combine_seeds, score_std, teacher_source
from orchestrator.app.report.students import _grid_of, per_task_best
from orchestrator.app.report.table import _flag, compare, seed_averages
from orchestrator.config import ConfigError, build_config, with_overrides
from orchestrator.stages.multitask_teacher import refine_multitask_teacher
from orchestrator.stages.teacher import (predict_logits, refine_task_teacher,
                                         refined_teacher_key, teacher_key)
from orchestrator.teachers.teacher_model import load_teacher
from orchestrator.training.train import init_teacher_path
from tasks.generated import generate_task_data
from tasks.registry import get_task


# ---------------------------------------------------------------------------------------------
# the teacher refined per task

@pytest.fixture(scope="module")
def multitask(tmp_path_factory):
    root = tmp_path_factory.mktemp("mt")
    data = {t: generate_task_data(get_task(t), 120, 40, seed=1) for t in ("sst2", "stsb")}
    cfg = build_config({"teacher": {"model": "random:tiny", "epochs": 1, "lr": 5e-3,
                                    "batch_size": 16, "max_length": 32,
                                    "refine_epochs": 2}}).teacher
    return cfg, data, root, refine_multitask_teacher(cfg, data, root, log=lambda *_: None)


def test_a_refined_teacher_starts_as_its_multitask_head_and_records_its_origin(multitask):
    cfg, data, root, mt = multitask
    d = data["stsb"]
    dev = d.dev["dev"]
    res = refine_task_teacher(cfg, d.task, d.train, dev, root, "fp", mt, log=lambda *_: None)
    rec = json.loads((res.path / "teacher_config.json").read_text())
    assert rec["refined_from"] == str(mt.path) and rec["config"]["epochs"] == 2
    assert json.loads((res.path / "train_info.json").read_text())["steps"] == 2 * 8  # 120/16
    # the starting point is the multi-task teacher's stsb head, exactly
    from orchestrator.stages.teacher import _init_from_multitask
    start, tok = _init_from_multitask(mt.path, d.task)
    start.eval()
    mt_teacher = load_teacher(mt.path)
    want = predict_logits(mt_teacher.model, mt_teacher.tokenizer, dev, 32, head="stsb")
    got = predict_logits(start, tok, dev, 32)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # saved as a single-task teacher the pool can serve; a second call reuses it
    t = load_teacher(res.path)
    assert not t.multitask and t.heads == {"stsb": 1}
    again = refine_task_teacher(cfg, d.task, d.train, dev, root, "fp", mt, log=lambda *_: None)
    assert again.reused and again.key == res.key


def test_refine_epochs_keys_only_the_refined_teachers():
    base = build_config({"teacher": {"model": "some/model"}}).teacher
    refined = build_config({"teacher": {"model": "some/model", "refine_epochs": 3}}).teacher
    from orchestrator.stages.multitask_teacher import multitask_teacher_key

    sst2 = get_task("sst2")
    data = {"sst2": generate_task_data(get_task("sst2"), 4, 2, seed=0)}
    # neither the single-task nor the multi-task teacher moves: a full budget keeps its caches
    assert teacher_key(base, sst2, "fp") == teacher_key(refined, sst2, "fp")
    assert multitask_teacher_key(base, data) == multitask_teacher_key(refined, data)
    k3 = refined_teacher_key("mt", refined, sst2, "fp")
    assert k3 != refined_teacher_key("mt", with_overrides(
        build_config({"teacher": {"model": "some/model"}}), {"teacher.refine_epochs": 2}).teacher,
        sst2, "fp")
    assert k3 != refined_teacher_key("other-mt", refined, sst2, "fp")
    with pytest.raises(ConfigError, match="refine_epochs"):
        build_config({"teacher": {"refine_epochs": -1}})


def test_rows_name_their_teachers():
    cfg = build_config({"tasks": ["sst2", "mrpc"], "teacher": {"refine_epochs": 3}})
    by = {r.id: teacher_source(row_config(cfg, r, {}, ["sst2", "mrpc"])) for r in ROWS}
    assert by["teacher"] == by["bcn_kd"] == by["mkd_bcn_st"] == "single"
    assert by["teacher_mkd"] == "multi"
    assert by["teacher_mkd_refined"] == by["mkd_bcn"] == by["mkd_transformer"] == "refined"
    # every student row picks its lr from the same grid; the Transformers' scaled by 0.1
    rows = {r.id: r for r in ROWS}
    assert all(r.tuned for r in ROWS if r.kind != "teacher")
    lrs, rung = _grid_of(rows["mkd_transformer"], cfg, (5e-4, 1e-3), 1)
    assert lrs == pytest.approx((5e-5, 1e-4)) and rung == 1
    assert _grid_of(rows["mkd_bcn"], cfg, (5e-4, 1e-3), 1)[0] == (5e-4, 1e-3)


# ---------------------------------------------------------------------------------------------
# where a joint Transformer starts

def _teacher_dir(path, **rec):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "teacher_config.json").write_text(json.dumps(rec))
    return str(path)


def test_a_joint_student_starts_from_the_encoder_its_teachers_share(tmp_path):
    mt = _teacher_dir(tmp_path / "mt", base_model="base")
    base = _teacher_dir(tmp_path / "base")
    one = {"teachers": {"sst2": {"path": mt}, "mrpc": {"path": mt}}}
    assert init_teacher_path(one) == mt  # one multi-task teacher serves both
    refined = {"teachers": {t: {"path": _teacher_dir(tmp_path / f"r-{t}", refined_from=mt,
                                                     base_model=base)} for t in ("sst2", "mrpc")}}
    assert init_teacher_path(refined) == mt
    single = {"teachers": {t: {"path": _teacher_dir(tmp_path / f"s-{t}", base_model=base)}
                           for t in ("sst2", "mrpc")}}
    assert init_teacher_path(single) == base
    hub = {"teachers": {t: {"path": _teacher_dir(tmp_path / f"h-{t}", base_model="bert-base")}
                        for t in ("sst2", "mrpc")}}
    assert init_teacher_path(hub) == hub["teachers"]["sst2"]["path"]  # no local base: the first


# ---------------------------------------------------------------------------------------------
# each joint task's best report

def _history(values: dict[str, list[float]]):
    def get(_run, key):
        return [SimpleNamespace(step=i + 1, value=v, timestamp=i) for i, v in
                enumerate(values.get(key, []))]
    return SimpleNamespace(get_metric_history=get)


def test_each_task_of_a_joint_student_keeps_its_own_best_report():
    client = _history({"epoch": [1, 2, 3, 3],  # report 4: stage 2 (per-task copies)
                       "sst2_score": [0.80, 0.86, 0.84, 0.85], "sst2_accuracy": [.8, .86, .84, .85],
                       "mrpc_score": [0.70, 0.69, 0.72, 0.75], "mrpc_f1": [.75, .74, .77, .8],
                       "mrpc_accuracy": [.65, .64, .67, .7]})
    best = per_task_best(client, "r", ["sst2", "mrpc"])
    assert best["sst2"] == {"accuracy": .86, "score": .86, "epoch": 2, "report": 2}
    assert best["mrpc"]["score"] == .75 and best["mrpc"]["f1"] == .8 and best["mrpc"]["report"] == 4
    tie = per_task_best(_history({"epoch": [1, 2], "sst2_score": [.9, .9],
                                  "sst2_accuracy": [.9, .9]}), "r", ["sst2"])
    assert tie["sst2"]["report"] == 1  # ties: the earlier report
    with pytest.raises(LookupError, match="rte_score"):
        per_task_best(client, "r", ["rte"])


# ---------------------------------------------------------------------------------------------
# seeds

def _cell(row, task, score, run="r"):
    return Cell(row, task, {"accuracy": score, "score": score}, run, "trained",
                train_seconds={run: 10.0})


def test_seeds_give_mean_std_and_a_task_average_per_seed():
    c = combine_seeds([_cell("bcn_kd", "rte", s, f"r{i}") for i, s in
                       enumerate((0.50, 0.56, 0.53))], [0, 1, 2])
    assert c.metrics["score"] == pytest.approx(0.53) and c.seeds == [0, 1, 2]
    assert score_std(c) == pytest.approx(0.03) and c.run_id == "r0"
    assert c.train_seconds == {"r0": 10.0, "r1": 10.0, "r2": 10.0}
    failed = Cell("bcn_kd", "rte", {}, None, "failed", error="boom")
    assert combine_seeds([_cell("bcn_kd", "rte", .5), failed], [0, 1]).status == "failed"
    other = combine_seeds([_cell("bcn_kd", "mrpc", s) for s in (0.70, 0.80, 0.75)], [0, 1, 2])
    # the row's average per seed: (0.50+0.70)/2, (0.56+0.80)/2, (0.53+0.75)/2
    assert seed_averages([c, other]) == pytest.approx([0.60, 0.68, 0.64])
    assert score_std(_cell("bcn_kd", "rte", .5)) is None


def test_a_difference_within_one_std_is_a_tie():
    def seeded(row, scores):
        return combine_seeds([_cell(row, "rte", s) for s in scores], list(range(len(scores))))

    base = seeded("bcn_kd", (0.50, 0.54, 0.52))  # 0.52 ± 0.02
    assert compare(seeded("mkd_bcn_st", (0.52, 0.54, 0.56)), base) == "tie"  # +0.02
    assert compare(seeded("mkd_bcn_st", (0.58, 0.60, 0.62)), base) == "win"  # +0.08
    assert compare(seeded("mkd_bcn_st", (0.44, 0.46, 0.48)), base) == "loss"
    one = _cell("bcn_kd", "rte", 0.52)
    assert compare(_cell("mkd_bcn_st", "rte", 0.52), one) == "loss"  # one seed: not above
    assert compare(_cell("mkd_bcn_st", "rte", 0.53), one) == "win"
    cells = [base, seeded("mkd_bcn_st", (0.52, 0.54, 0.56))]
    rows = select_rows(["bcn_kd", "mkd_bcn_st"])
    flags = _flag(rows, cells, ["rte"])
    assert flags == ["row 5c mkd_bcn_st on rte: score 54.0 ± 2.0 ties with row 6a bcn_kd "
                     "(52.0 ± 2.0) (within one std)"]
    md = format_markdown("t", build_table(rows, cells, ["rte"], pd.DataFrame()), rows, ["rte"],
                         None, flags, [])
    line = next(ln for ln in md.splitlines() if ln.startswith("| 5c "))
    assert "54.0 (± 2.0) ⚠" in line and "| 54.0 ± 2.0 |" in line


def test_results_json_and_the_readme_carry_the_seeds():
    from orchestrator.app.report import results_json, results_markdown

    cells = [combine_seeds([_cell("bcn_kd", t, s) for s in (a, b)], [0, 1])
             for t, a, b in (("rte", 0.5, 0.6), ("mrpc", 0.7, 0.8))]
    rows = select_rows(["bcn_kd"])
    perf = pd.DataFrame({"non_embedding": [2e6], "latency_b1_ms": [3.0]}, index=["bcn_kd"])
    out = results_json("full", rows, cells, perf, {})
    rte = next(c for c in out["cells"] if c["task"] == "rte")
    assert rte["score"] == 55.0 and rte["seeds"] == [0, 1] and rte["seed_scores"] == [50.0, 60.0]
    assert rte["score_std"] == pytest.approx(100 * np.std([0.5, 0.6], ddof=1), abs=1e-3)
    line = next(ln for ln in results_markdown(out).splitlines() if ln.startswith("| 6a "))
    # average per seed: 0.6 and 0.7 -> 65.0 ± 7.1
    assert "55.0 (± 7.1)" in line and "| 65.0 ± 7.1 |" in line

