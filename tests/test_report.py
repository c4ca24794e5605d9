"""``distillray report`` on generated data: the table's shape, one MLflow run per cell with its
tags, and a second call that trains nothing and says what it reused.

The report runs once for the module (the ``report_smoke`` preset: sst2 + mrpc, a tiny random
teacher, tiny students) in a temp work root and MLflow store; the second call goes through the
CLI. Flags, budgets and config keys are also checked without training.
"""
from __future__ import annotations

import contextlib
import io
import os
import time

import numpy as np
import pandas as pd
import pytest

from orchestrator.app.report import (BERT_BASE, KIND_CELL, KIND_PARENT, KIND_TRAIN, ROW_IDS, ROWS,
                                     TAG_CONFIG, TAG_REPORT, TAG_ROW, TAG_TASK, Cell, ReportError,
                                     budget_overrides, build_table, cell_key, format_markdown,
                                     parse_row_sets, resolve_report, run_report, select_rows)
from orchestrator.app.report.table import _flag
from orchestrator.runtime import tracking

pytestmark = pytest.mark.timeout(900)

TASKS = ["sst2", "mrpc"]
NAME = "report-test"


@pytest.fixture(scope="module")
def report(tmp_path_factory, tiny_nltk_data):
    import ray

    root = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    # row 4's augmentation tags words: the tiny tagger works with or without the shared assets
    extra = {"tracking.uri": uri, "work_root": str(root / ".distillray"),
             "augment.nltk_data": str(tiny_nltk_data)}
    old = os.getcwd()
    os.chdir(root)
    try:
        cfg = resolve_report("report_smoke", "small", TASKS, [], extra=extra)
        logs: list[str] = []
        t0 = time.time()
        first = run_report(cfg, name=NAME, out=root / "report.md", repeats=(3, 1), warmup=1,
                           log=logs.append)
        first_s = time.time() - t0

        from orchestrator.cli import main
        stdout = io.StringIO()
        t0 = time.time()
        with contextlib.redirect_stdout(stdout):
            rc = main(["report", "--preset", "report_smoke", "--tasks", ",".join(TASKS),
                       "--name", NAME, "--tracking-uri", uri, "--work-root", extra["work_root"],
                       "--out", str(root / "report2.md"), "--json", str(root / "report2.json"),
                       "--repeats", "3", "--repeats-64", "1",
                       "--set", f"augment.nltk_data={tiny_nltk_data}"])
        second_s = time.time() - t0
    finally:
        os.chdir(old)
        ray.shutdown()
    return {"root": root, "uri": uri, "first": first, "first_s": first_s, "logs": logs,
            "rc": rc, "stdout": stdout.getvalue(), "second_s": second_s}


def _runs(uri: str, **tags):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("distillray")
    return client, tracking.find_runs(client, exp.experiment_id, tags)


def test_table_has_every_row_and_task(report):
    res = report["first"]
    t = res.table
    assert list(t.index) == [*ROW_IDS, BERT_BASE]
    assert res.tasks == TASKS and res.trained == len(ROW_IDS) * len(TASKS) and res.failed == 0
    metric_cols = {"sst2": ["accuracy", "score"], "mrpc": ["f1", "accuracy", "score"]}
    for task, cols in metric_cols.items():
        for c in cols:
            vals = t.loc[list(ROW_IDS), f"{task}_{c}"]
            assert vals.notna().all() and ((vals >= 0) & (vals <= 1)).all(), (task, c, vals)
        assert np.isnan(t.loc[BERT_BASE, f"{task}_score"])  # architecture only
    # the generated sentiment is learnable: the teacher and the distilled students learn it
    assert t.loc["teacher", "sst2_accuracy"] > 0.8, t["sst2_accuracy"]
    assert t.loc["bilstm_kd", "sst2_accuracy"] > 0.6, t["sst2_accuracy"]
    for c in ("non_embedding_params", "latency_b1_ms", "latency_b64_ms"):
        assert (t[c] > 0).all(), t[c]
    assert t.loc["teacher", "x_fewer_params_vs_teacher"] == 1.0
    assert t.loc[BERT_BASE, "x_faster_b1_vs_bert_base"] == 1.0
    assert t.loc[BERT_BASE, "non_embedding_params"] > 80e6  # BERT-base, 12 x 768
    assert (t.loc[list(ROW_IDS), "x_fewer_params_vs_bert_base"] > 100).all()
    np.testing.assert_allclose(
        t.loc["bilstm_kd", "x_faster_b1_vs_teacher"],
        t.loc["teacher", "latency_b1_ms"] / t.loc["bilstm_kd", "latency_b1_ms"])

    md = res.markdown
    assert (report["root"] / "report.md").read_text() == md
    table_lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert len(table_lines) == 1 + len(ROW_IDS) + 1  # header, rows, BERT-base
    assert "SST-2 acc" in table_lines[0] and "MRPC F1/acc" in table_lines[0]
    for r in ROWS:
        assert any(ln.startswith(f"| {r.num} | {r.label} |") for ln in table_lines), r
    assert "Train/dev examples per task: sst2 500/100, mrpc 500/100" in md
    assert "Students: 2 epochs" in md and f"{len(ROW_IDS) * len(TASKS)} cell(s) trained, 0 reused" in md


def test_every_cell_is_an_mlflow_run_with_its_tags(report):
    res = report["first"]
    client, parents = _runs(report["uri"], **{tracking.TAG_KIND: KIND_PARENT, TAG_REPORT: NAME})
    assert len(parents) == 1 and parents[0].info.run_id == res.parent_run_id
    assert parents[0].info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(res.parent_run_id)} >= {
        "report.md", "report.csv", "report_cells.json"}
    _, cells = _runs(report["uri"], **{tracking.TAG_KIND: KIND_CELL, TAG_REPORT: NAME})
    assert sorted((c.data.tags[TAG_ROW], c.data.tags[TAG_TASK]) for c in cells) == sorted(
        (r, t) for r in ROW_IDS for t in TASKS), "exactly one run per (row, task)"
    for c in cells:
        row, task = c.data.tags[TAG_ROW], c.data.tags[TAG_TASK]
        assert c.info.status == "FINISHED"
        assert c.data.tags[tracking.TAG_PARENT] == res.parent_run_id
        assert c.data.tags[TAG_CONFIG] and c.data.tags["distillray.current"] == "true"
        m = c.data.metrics
        assert m["report_score"] == pytest.approx(res.table.loc[row, f"{task}_score"])
        for k in ("report_non_embedding_params", "report_latency_b1_ms",
                  "report_latency_b64_ms", "report_x_faster_b1_vs_bert_base",
                  "report_x_fewer_params_vs_teacher"):
            assert k in m, (row, task, k)
        assert ("distillray.flag" in c.data.tags)
    # every student trains in a report-train run holding it: one per single-task cell (no lr
    # grid in the small budget), one joint run per MKD row; each cell points at its run
    _, trains = _runs(report["uri"], **{tracking.TAG_KIND: KIND_TRAIN, TAG_REPORT: NAME})
    joint = [j for j in trains if j.data.tags[TAG_ROW].startswith("mkd_")]
    single = [j for j in trains if not j.data.tags[TAG_ROW].startswith("mkd_")]
    assert sorted(j.data.tags[TAG_ROW] for j in joint) == sorted(
        r.id for r in ROWS if r.kind == "mkd")
    students = [r.id for r in ROWS if r.kind == "single"]
    assert sorted((j.data.tags[TAG_ROW], j.data.tags[TAG_TASK]) for j in single) == sorted(
        (r, t) for r in students for t in TASKS)
    for j in trains:
        assert j.info.status == "FINISHED" and j.data.metrics["compute_seconds"] > 0
        assert "student/model.safetensors" in {a.path for a in client.list_artifacts(
            j.info.run_id, "student")}
    for j in joint:
        assert j.data.tags[TAG_TASK] == "sst2,mrpc"
        for t in TASKS:
            assert f"best_{t}_score" in j.data.metrics
    by_id = {j.info.run_id: j for j in trains}
    for c in cells:
        if c.data.tags[TAG_ROW].startswith("teacher"):
            continue
        j = by_id[c.data.tags["distillray.train_run"]]
        assert j.data.tags[TAG_ROW] == c.data.tags[TAG_ROW]
        assert c.data.tags[TAG_TASK] in j.data.tags[TAG_TASK].split(",")
    kd = next(c for c in cells if c.data.tags[TAG_ROW] == "bilstm_soft")
    assert kd.data.metrics["transfer_size"] > 500  # trained on the augmented transfer set


def test_second_call_trains_nothing_and_says_what_it_reused(report):
    first, out = report["first"], report["stdout"]
    assert report["rc"] == 0, out
    assert f"0 cell(s) trained, {len(ROW_IDS) * len(TASKS)} reused, 0 failed" in out
    for r in ROW_IDS:
        if not r.startswith(("teacher", "mkd_")):
            assert f"{r}/sst2: reused MLflow run" in out, r
    assert "mkd_bcn: reused joint MLflow run" in out
    assert "reusing multi-task teacher" in out and "(reused)" in out
    for word in (": training", "fine-tuning", "refining", "[bundle]", "[label]"):
        assert word not in out, word  # no cell trained, no teacher, bundle or soft label built
    _, cells = _runs(report["uri"], **{tracking.TAG_KIND: KIND_CELL, TAG_REPORT: NAME})
    assert len(cells) == len(ROW_IDS) * len(TASKS), "no new cell runs"
    assert all(c.data.tags["distillray.last_call"] == "reused" for c in cells)
    second = (report["root"] / "report2.md").read_text()
    # the same scores; latency is measured again
    rows = lambda md: [ln.split(" | ")[:5] for ln in md.splitlines() if ln.startswith("| ")]  # noqa: E731
    assert rows(second) == rows(first.markdown)
    assert report["second_s"] < report["first_s"] / 3, (report["second_s"], report["first_s"])
    # the JSON of a call that reused everything holds the same cells, tuning included
    import json
    again = json.loads((report["root"] / "report2.json").read_text())
    strip = lambda r: [{k: c[k] for k in ("row", "task", "score", "metrics", "tuning")}  # noqa: E731
                       for c in r["cells"]]
    assert strip(again) == strip(first.results)
    assert {c["row"] for c in again["cells"] if c["tuning"]} == {
        r.id for r in ROWS if r.kind != "teacher"}


# ---------------------------------------------------------------------------------------------
# without training


def test_flags_name_rows_that_do_not_beat_their_baselines():
    sst2 = lambda x: {"accuracy": x, "score": x}  # noqa: E731
    mrpc = lambda x: {"f1": x, "accuracy": x, "score": x}  # noqa: E731
    cells = [Cell("bilstm_gold", "sst2", sst2(0.80), "a", "trained"),
             Cell("bilstm_kd", "sst2", sst2(0.82), "b", "trained"),
             Cell("bilstm_soft", "sst2", sst2(0.81), "c", "trained"),
             Cell("mkd_bcn", "sst2", sst2(0.85), "d", "trained"),
             Cell("bilstm_gold", "mrpc", mrpc(0.6), "e", "trained"),
             Cell("bilstm_kd", "mrpc", mrpc(0.6), "f", "trained"),
             Cell("bilstm_soft", "mrpc", mrpc(0.7), "g", "trained"),
             Cell("mkd_bcn", "mrpc", mrpc(0.6), "h", "trained")]
    flags = _flag(select_rows(["bilstm_gold", "bilstm_kd", "bilstm_soft", "mkd_bcn"]), cells,
                  ["sst2", "mrpc"])
    assert flags == ["row 4 bilstm_soft on sst2: score 81.0 does not beat row 3 bilstm_kd (82.0)",
                     "row 5a mkd_bcn on mrpc: score 60.0 does not beat row 3 bilstm_kd (60.0)"]
    assert cells[2].flag and cells[7].flag and not cells[6].flag and not cells[3].flag
    # the markdown marks exactly the flagged cells (no ⚠ on rows without flags)
    rows = select_rows(["bilstm_gold", "bilstm_kd", "bilstm_soft", "mkd_bcn"])
    table = build_table(rows, cells, ["sst2", "mrpc"], pd.DataFrame())
    md = format_markdown("t", table, rows, ["sst2", "mrpc"], None, flags, [])
    marked = {ln.split(" | ")[0].lstrip("| "): ln.count("⚠") for ln in md.splitlines()
              if ln.startswith("| ") and "⚠" in ln}
    assert marked == {"4": 1, "5a": 1}, marked
    # a baseline row that is not in the report is not compared
    assert _flag(select_rows(["bilstm_soft"]), cells, ["sst2"]) == []


def test_readme_table_prints_the_scores_the_report_prints():
    """The README's table comes from the JSON, the report's from the cells: both print 54.2 for
    RTE's 150/277 (0.54152), which a JSON rounded to 2 decimals (54.15) would print as 54.1."""
    from orchestrator.app.report import results_json, results_markdown

    rte = 150 / 277
    cells = [Cell("bilstm_gold", "rte", {"accuracy": rte, "score": rte}, "a", "reused")]
    rows = select_rows(["bilstm_gold"])
    perf = pd.DataFrame({"non_embedding": [300_000], "latency_b1_ms": [1.5]},
                        index=["bilstm_gold"])
    md = format_markdown("t", build_table(rows, cells, ["rte"], pd.DataFrame()), rows, ["rte"],
                         None, [], [])
    readme = results_markdown(results_json("full", rows, cells, perf, {"teacher": 60.0}))
    line = lambda text: next(ln for ln in text.splitlines() if ln.startswith("| 2 "))  # noqa: E731
    assert " 54.2 " in line(md) and " 54.2 " in line(readme), (line(md), line(readme))


def test_stage_times_print_the_same_in_the_report_and_the_readme():
    """The report's note formats the stage seconds, the README block formats them from the JSON:
    1978.6 s must read 32m59s in both, not 32m59s in one and 32m58s from a rounded copy."""
    from orchestrator.app.report import results_json, results_markdown, stage_seconds
    from orchestrator.app.report.table import _stage_note

    from types import SimpleNamespace

    teachers = SimpleNamespace(seconds={"teacher": 0.0})  # the report's teacher stages
    stages = stage_seconds([], [], teachers, 1978.6, {"labeling": 7199.5})
    assert stages == {"teacher": 0.0, "labeling": 7200.0, "measure": 1979.0}
    readme = results_markdown(results_json("full", [], [], pd.DataFrame(), stages))
    for text in (_stage_note(stages), readme):
        assert "measure 32m59s" in text and "labeling 2h00m" in text, text


def test_budgets_cap_small_and_lift_full_and_set_wins():
    cfg = resolve_report("report_smoke", "small", ["sst2"], ["train.epochs=7"])
    assert cfg.data.max_train_examples == 500  # below the cap: kept
    assert cfg.train.epochs == 7  # --set wins over the budget
    assert cfg.tasks == ["sst2"]
    big = resolve_report("report_smoke", "small", None, ["data.max_train_examples=50000",
                                                          "teacher.epochs=9"])
    caps = budget_overrides(big, "small")
    assert caps["data.max_train_examples"] == 3000 and caps["teacher.epochs"] == 3.0
    full = resolve_report("report_smoke", "full", None, [])
    assert full.data.max_train_examples is None and full.augment.max_examples is None
    with pytest.raises(ReportError, match="--budget 'huge'"):
        resolve_report("report_smoke", "huge")


def test_row_selection_and_row_sets_errors():
    assert parse_row_sets(["mkd_transformer:train.lr=5e-5"]) == {
        "mkd_transformer": {"train.lr": 5e-5}}
    with pytest.raises(ReportError, match="unknown row 'nope'"):
        parse_row_sets(["nope:train.lr=1"])
    with pytest.raises(ReportError, match="ROW:section.key=value"):
        parse_row_sets(["train.lr=1"])
    with pytest.raises(ReportError, match="unknown row"):
        select_rows(["bilstm", "teacher"])
    # the CLI's --rows help names every row; each MKD row is compared with its own student
    # distilled one task at a time
    from orchestrator.cli import build_parser
    sub = next(a for a in build_parser()._actions if a.dest == "cmd").choices["report"]
    rows_help = next(a.help for a in sub._actions if a.dest == "rows")
    assert all(r in rows_help.split(": ")[1].split(",") for r in ROW_IDS)
    base = {r.id: r for r in ROWS}
    assert "bcn_kd" in base["mkd_bcn"].baselines and "transformer_kd" in base["mkd_transformer"].baselines
    assert base["bcn_kd"].sets["student.arch"] == "bcn" and not base["bcn_kd"].sets["teacher.multitask"]


def test_cell_key_follows_what_shapes_the_student():
    from orchestrator.app.report import row_config
    from orchestrator.stages.pipeline import TeacherRef
    from tasks.generated import generate_task_data
    from tasks.registry import get_task

    base = resolve_report("report_smoke", "small", ["sst2"], [])
    data = {"sst2": generate_task_data(get_task("sst2"), 30, 10, 0)}
    refs = {"sst2": TeacherRef("/t/a", "key-a", "sst2", 32)}
    by_id = {r.id: r for r in ROWS}
    row = by_id["bilstm_kd"]
    key = cell_key(row, row_config(base, row, {}, ["sst2"]), data, refs)
    same = row_config(base, row, {"bilstm_kd": {"train.cpus_per_worker": 0.5}}, ["sst2"])
    assert cell_key(row, same, data, refs) == key  # resources do not change the student
    lr = row_config(base, row, {"bilstm_kd": {"train.lr": 0.5}}, ["sst2"])
    assert cell_key(row, lr, data, refs) != key
    other_teacher = {"sst2": TeacherRef("/t/b", "key-b", "sst2", 32)}
    assert cell_key(row, row_config(base, row, {}, ["sst2"]), data, other_teacher) != key
    gold = by_id["bilstm_gold"]
    assert cell_key(gold, row_config(base, gold, {}, ["sst2"]), data, refs) != key
