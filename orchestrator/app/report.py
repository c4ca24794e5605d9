"""The results table: teachers and students of every kind on the same tasks, budget and seeds.

    distillray report --budget small --tasks sst2,mrpc --out report.md

Rows (no search; every student gets the same epoch limit, batch size and seed; with
``--budget full`` the BiLSTM rows each pick ``train.lr`` from one grid on dev, ``LR_GRID``):

    1a  teacher        the base model fine-tuned on each task (``orchestrator.stages.teacher``)
    1b  teacher_mkd    one multi-task teacher refined on all tasks
                       (``orchestrator.stages.multitask_teacher``)
    2   bilstm_gold    BiLSTM (Tang et al. 2019) on gold labels only (``train.loss=ce``)
    3   bilstm_kd      BiLSTM distilled from row 1a (MSE on logits), original training set
    4   bilstm_soft    BiLSTM_SOFT: distilled on the Tang-augmented transfer set
    5a  mkd_bcn        BCN distilled jointly on all tasks from row 1b (MKD)
    5b  mkd_transformer  3-layer Transformer, from row 1b's layers, distilled jointly (MKD;
                       learning rate x0.1, as a pre-initialized encoder needs)
    6a  bcn_kd         the BCN of row 5a distilled per task from row 1a (single-task KD)
    6b  transformer_kd the Transformer of row 5b distilled per task from row 1a
    ref bert_base      the BERT-base architecture (random weights): size and latency only

Each (row, task) is one MLflow run (a *cell*) tagged ``distillray.kind=report-cell``,
``distillray.report=<name>``, ``distillray.row=<row>``, ``distillray.task=<task>`` and
``distillray.config_key=<key>``, holding ``report_*`` metrics (the task's dev metrics, ``score``,
non-embedding params, batch-1 / batch-64 latency and the ratios), under one parent run
(``distillray.kind=report``) that carries the table as ``report.md``. Every student trains in a
``report-train`` run (one per learning rate of a tuned cell; one joint run per MKD row) that
holds its learning curve and best student; the cell points at the one it kept
(``distillray.train_run``).

Everything expensive is reused: teachers, transfer sets, soft labels and bundles through the
pipeline's content-keyed caches; a train or cell run for the same config key that already
FINISHED in this report is not trained again (its metrics and student are read back from
MLflow). A train run a killed call left unfinished is resumed: the same MLflow run, and Ray
Train's run named by the key restores its last checkpoint (weights, optimizer, batch order, RNG),
so the student equals an uninterrupted one. Latency is measured again on every call, interleaved
across all rows and BERT-base, so the ratios always come from one measurement.

Flags: row 4 must beat rows 2 and 3; each MKD row must beat row 3 and the single-task KD of
its own student (6a, 6b: same transfer data, loss and epochs); row 1b must beat row 1a. A row
that does not is marked in the table and listed, never hidden.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from orchestrator.app.run import parse_sets, resolve_overrides
from orchestrator.config import (MULTITASK_ENTRY, ConfigError, ExperimentConfig, parse_override,
                                 with_overrides, with_values)
from orchestrator.runtime import tracking
from orchestrator.runtime.keys import content_key
from orchestrator.runtime.machine import describe as describe_machine
from orchestrator.runtime.progress import duration

REPORT_VERSION = 2  # 2: students train in report-train runs, a cell run per (row, task)
KIND_PARENT, KIND_CELL, KIND_TRAIN = "report", "report-cell", "report-train"
TAG_REPORT, TAG_ROW, TAG_TASK = "distillray.report", "distillray.row", "distillray.task"
TAG_CONFIG = "distillray.config_key"
BERT_BASE = "bert_base"


@dataclass(frozen=True)
class Row:
    id: str
    num: str
    label: str
    kind: str  # teacher | single | mkd
    sets: dict[str, Any] = field(default_factory=dict)
    baselines: tuple[str, ...] = ()
    lr_scale: float = 1.0
    tuned: bool = False  # picks train.lr from the budget's grid on dev (the BiLSTM rows)


ROWS: tuple[Row, ...] = (
    Row("teacher", "1a", "Teacher, fine-tuned per task", "teacher", {"teacher.multitask": False}),
    Row("teacher_mkd", "1b", "Teacher, multi-task refined", "teacher", {"teacher.multitask": True},
        ("teacher",)),
    Row("bilstm_gold", "2", "BiLSTM, gold labels only (no teacher)", "single",
        {"student.arch": "bilstm", "train.loss": "ce", "augment.enabled": False,
         "teacher.multitask": False}, tuned=True),
    Row("bilstm_kd", "3", "BiLSTM distilled, no augmentation", "single",
        {"student.arch": "bilstm", "train.loss": "mse", "augment.enabled": False,
         "teacher.multitask": False}, tuned=True),
    Row("bilstm_soft", "4", "BiLSTM_SOFT (distilled, Tang augmentation)", "single",
        {"student.arch": "bilstm", "train.loss": "mse", "augment.enabled": True,
         "teacher.multitask": False}, ("bilstm_gold", "bilstm_kd"), tuned=True),
    Row("mkd_bcn", "5a", "MKD BCN (joint, multi-task teacher)", "mkd",
        {"student.arch": "bcn", "train.loss": "mse", "augment.enabled": False,
         "teacher.multitask": True}, ("bilstm_kd", "bcn_kd")),
    Row("mkd_transformer", "5b", "MKD Transformer (joint, from teacher layers)", "mkd",
        {"student.arch": "transformer", "train.loss": "mse", "augment.enabled": False,
         "teacher.multitask": True}, ("bilstm_kd", "transformer_kd"), lr_scale=0.1),
    # the MKD students distilled one task at a time: what joint distillation has to beat
    Row("bcn_kd", "6a", "BCN distilled per task (single-task teacher)", "single",
        {"student.arch": "bcn", "train.loss": "mse", "augment.enabled": False,
         "teacher.multitask": False}),
    Row("transformer_kd", "6b", "Transformer distilled per task (from teacher layers)", "single",
        {"student.arch": "transformer", "train.loss": "mse", "augment.enabled": False,
         "teacher.multitask": False}, lr_scale=0.1),
)
ROW_IDS = tuple(r.id for r in ROWS)

# --budget: caps for "small" (a value already below a cap stays), fixed values for "full"
BUDGET_CAPS = {"small": {"data.max_train_examples": 3000, "data.max_dev_examples": 500,
                         "teacher.epochs": 3.0, "train.epochs": 3, "augment.n_iter": 10,
                         "augment.max_examples": 10000}}
# full: all the data; teachers keep their best epoch on dev, read wordpieces up to 128 (RTE and
# MRPC pairs run past 64) and train at the preset's lr 5e-5 for 3 epochs on SST-2; the small
# sets train 10 epochs, each at the lr of {5e-5, 1e-4} that scored better on dev (1e-4: STS-B
# only; MRPC tied, RTE and CoLA lost 1.4 and 4.3 points at 1e-4); the
# multi-task teacher 2 epochs of the mixture (SST-2 is 77% of it, and its own teacher peaked at
# epoch 2); Tang's n_iter (20 single, 10 pairs)
BUDGET_FULL = {"data.max_train_examples": None, "data.max_dev_examples": None,
               "teacher.epochs": 3.0, "teacher.max_train_examples": None,
               "teacher.max_length": 128, "teacher.keep_best_epoch": True,
               "teacher.per_task": {"mrpc": {"epochs": 10}, "rte": {"epochs": 10},
                                    "cola": {"epochs": 10}, "stsb": {"epochs": 10, "lr": 1e-4},
                                    MULTITASK_ENTRY: {"epochs": 2}},
               "train.epochs": 10, "train.patience": 2, "augment.n_iter": None,
               "augment.max_examples": None}
BUDGETS = ("small", "full")
# the tuned rows' train.lr grid, the same for the gold-label and the distilled BiLSTMs (each
# cell keeps the value with the best dev score; epochs by patience)
LR_GRID = {"small": (), "full": (5e-4, 1e-3, 2e-3)}
# the grid's rung: every learning rate trains this many reports (epochs), the best dev score so
# far picks one, and only that one trains on (with patience); the others stop there. It costs
# one epoch per losing point instead of a whole training: what makes the three BiLSTM rows'
# grids affordable on the 20x Tang-augmented SST-2 transfer set
GRID_RUNG = {"small": None, "full": 1}
# settings of single rows per budget (``--row-set`` wins): MKD's second stage, each task
# fine-tuning its own copy of the jointly distilled student
BUDGET_ROW_SETS = {"small": {}, "full": {"mkd_bcn": {"train.finetune_epochs": 2},
                                         "mkd_transformer": {"train.finetune_epochs": 2}}}

METRIC_SHORT = {"accuracy": "acc", "f1": "F1", "matthews": "MCC", "pearson": "Pearson",
                "spearman": "Spearman"}


class ReportError(ConfigError):
    """A report that cannot be set up (unknown rows, budgets, tasks)."""


@dataclass
class Cell:
    row: str
    task: str
    metrics: dict[str, float]  # the task's dev metrics and "score"
    run_id: str | None
    status: str  # trained | reused | failed
    config_key: str = ""
    train_run_id: str | None = None  # the run holding the student (MKD: the joint run)
    transfer_size: float | None = None
    error: str | None = None
    flag: str | None = None
    tuning: dict[str, Any] = field(default_factory=dict)  # how the row picked its student
    train_seconds: dict[str, float] = field(default_factory=dict)  # compute s per train run


@dataclass
class ReportResult:
    name: str
    parent_run_id: str
    tasks: list[str]
    rows: list[str]
    table: pd.DataFrame  # index: row ids + bert_base; per-task metrics, size, latency, ratios
    cells: pd.DataFrame  # one line per (row, task)
    markdown: str
    flags: list[str]
    trained: int
    reused: int
    failed: int
    seconds: float
    out: Path | None = None
    results: dict[str, Any] = field(default_factory=dict)  # the table as JSON (results_json)


# ---------------------------------------------------------------------------------------------
# configuration

def resolve_report(preset: str = "report", budget: str = "small", tasks: list[str] | None = None,
                   sets: list[str] | None = None, assets: str | None = None,
                   extra: dict[str, Any] | None = None) -> ExperimentConfig:
    """The report's base config: preset, then the budget, then ``--set`` (which wins)."""
    if budget not in BUDGETS:
        raise ReportError(f"--budget {budget!r}: choose {' or '.join(BUDGETS)}")
    given = parse_sets([f"tasks=[{','.join(tasks)}]"] if tasks else []) | parse_sets(sets)
    _, cfg, _ = resolve_overrides(preset, {**(extra or {}), **given}, assets)
    # the budget's values go under the --set ones (a key given there keeps its value) and over
    # the rest; none of them is one the local assets set
    return with_overrides(cfg, {k: v for k, v in budget_overrides(cfg, budget).items()
                                if k not in given})


def budget_overrides(cfg: ExperimentConfig, budget: str) -> dict[str, Any]:
    if budget == "full":
        return dict(BUDGET_FULL)
    out = {}
    for key, cap in BUDGET_CAPS[budget].items():
        section, name = key.split(".")
        cur = getattr(getattr(cfg, section), name)
        out[key] = cap if cur is None else min(cur, cap)
    return out


def describe_budget(budget: str, cfg: ExperimentConfig, data) -> str:
    sizes = ", ".join(f"{t} {len(d.train)}/{len(next(iter(d.dev.values())))}"
                      for t, d in data.items())
    a = cfg.augment
    caps = (f" (caps: <= {BUDGET_CAPS['small']['data.max_train_examples']} train / "
            f"<= {BUDGET_CAPS['small']['data.max_dev_examples']} dev examples per task, teacher "
            f"<= {BUDGET_CAPS['small']['teacher.epochs']:g} epochs, students <= "
            f"{BUDGET_CAPS['small']['train.epochs']} epochs, augmentation <= "
            f"{BUDGET_CAPS['small']['augment.n_iter']} rounds and <= "
            f"{BUDGET_CAPS['small']['augment.max_examples']} examples per task)"
            if budget == "small" else " (full data)")
    tt = cfg.teacher
    per_task = "; ".join(f"{t}: " + ", ".join(f"{k} {v:g}" if isinstance(v, (int, float))
                                              else f"{k} {v}" for k, v in over.items())
                         for t, over in (tt.per_task or {}).items()
                         if t in data or (t == MULTITASK_ENTRY and len(data) > 1))
    return (f"budget {budget}{caps}. Train/dev examples per task: {sizes}. Teacher: "
            f"{tt.model.rstrip('/').split('/')[-1]}, {tt.epochs:g} epochs, lr {tt.lr:g}, "
            f"max_length {tt.max_length}" + (f" ({per_task})" if per_task else "")
            + f". Students: {cfg.train.epochs} epochs, batch "
            f"{cfg.train.batch_size}, lr {cfg.train.lr:g} (Transformer x0.1), seed "
            f"{cfg.train.seed}. Augmentation (row 4): n_iter "
            f"{a.n_iter if a.n_iter is not None else 'Tang default (20 single / 10 pairs)'}, "
            f"cap {a.max_examples if a.max_examples is not None else 'none'} per task.")


def parse_row_sets(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``ROW:KEY=VALUE`` -> {row: {key: value}} (a setting for one row only)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        if ":" not in item:
            raise ReportError(f"--row-set {item!r} must look like ROW:section.key=value")
        row, kv = item.split(":", 1)
        if row not in ROW_IDS:
            raise ReportError(f"--row-set {item!r}: unknown row {row!r}; rows: {', '.join(ROW_IDS)}")
        k, v = parse_override(kv)
        out.setdefault(row, {})[k] = v
    return out


def select_rows(rows: list[str] | None) -> list[Row]:
    if not rows:
        return list(ROWS)
    unknown = [r for r in rows if r not in ROW_IDS]
    if unknown:
        raise ReportError(f"unknown row(s) {', '.join(unknown)}; rows: {', '.join(ROW_IDS)}")
    return [r for r in ROWS if r.id in rows]


def row_config(base: ExperimentConfig, row: Row, row_sets: dict[str, dict[str, Any]],
               tasks: list[str]) -> ExperimentConfig:
    """The row's config: the base, the row's own settings, then ``--row-set`` for it."""
    over = dict(row.sets)
    if row.lr_scale != 1.0:
        over["train.lr"] = base.train.lr * row.lr_scale
    over.update(row_sets.get(row.id, {}))
    return with_values(with_overrides(base, over), {"tasks": list(tasks), "data.task": tasks[0]})


def cell_key(row: Row, cfg: ExperimentConfig, data, teachers) -> str:
    """What a trained student depends on: the bundle (data, teacher, transfer set, encoding),
    the student and the training settings (resource-only settings left out)."""
    from orchestrator.stages.pipeline import bundle_key

    from orchestrator.training.train import student_precision

    train = asdict(cfg.train)
    for k in ("cpus_per_worker", "torch_threads", "use_gpu", "precision"):
        train.pop(k, None)
    if student_precision(cfg.train) != "fp32":  # absent for fp32: keys from before it stay
        train["precision"] = student_precision(cfg.train)
    student = asdict(cfg.student)
    student.pop("embeddings", None)  # by content, in the bundle key
    return content_key({"v": REPORT_VERSION, "row": row.id, "tasks": sorted(data),
                        "bundle": bundle_key(cfg, data, teachers), "student": student,
                        "train": train})


# ---------------------------------------------------------------------------------------------
# the run

class _Report:
    """State of one report call: the store, the parent run, Ray (started only when needed)."""

    def __init__(self, cfg: ExperimentConfig, name: str, address: str | None, log: Callable):
        from mlflow.tracking import MlflowClient

        self.cfg, self.name, self.address, self.log = cfg, name, address, log
        self.uri = tracking.resolve_uri(cfg.tracking.uri)
        tracking.check_reachable(self.uri)
        self.client = MlflowClient(self.uri)
        work_root = Path(cfg.work_root)
        self.exp_id = tracking.experiment_id_for(self.client, cfg)
        self.storage = str(work_root / "report-runs")
        Path(self.storage).mkdir(parents=True, exist_ok=True)
        self.ray_ready = False
        self.parent = ""
        self.t0 = time.time()

    def note(self, msg: str) -> None:
        self.log(f"[report +{time.time() - self.t0:.0f}s] {msg}")

    def ensure_ray(self, cfg: ExperimentConfig) -> None:
        if self.ray_ready:
            return
        from orchestrator.runtime.ray_runtime import check_budget, init_ray
        resources = init_ray(self.address, log=self.log)
        check_budget(cfg, resources)
        self.ray_ready = True

    def find(self, kind: str, row: str, task: str, key: str) -> list:
        return tracking.find_runs(self.client, self.exp_id, {
            tracking.TAG_KIND: kind, TAG_REPORT: self.name, TAG_ROW: row, TAG_TASK: task,
            TAG_CONFIG: key})

    def finished(self, kind: str, row: str, task: str, key: str, close_unfinished: bool = True):
        """The newest FINISHED run of this kind and key. ``close_unfinished``: runs a killed
        call left RUNNING are closed as failed (not for training runs, which resume)."""
        runs = self.find(kind, row, task, key)
        for r in runs:  # an earlier call that died mid-run: close it, it is not reused
            if close_unfinished and r.info.status in ("RUNNING", "SCHEDULED"):
                tracking.end_run(self.client, r.info.run_id, False,
                                 "interrupted: a later report call found it still running")
        done = [r for r in runs if r.info.status == "FINISHED"]
        return max(done, key=lambda r: r.info.start_time) if done else None

    def resume_or_start(self, kind: str, row: Row, task: str, key: str,
                        extra: dict | None = None) -> tuple[str, bool]:
        """(run id, resumed): the newest unfinished run with this key, reopened (a killed or
        failed call's: its metrics so far stay, the training resumes from its checkpoint), or
        a new run."""
        left = [r for r in self.find(kind, row.id, task, key) if r.info.status != "FINISHED"]
        if not left:
            return self.start(kind, row, task, key, extra), False
        run = max(left, key=lambda r: r.info.start_time)
        rid = run.info.run_id
        self.client.update_run(rid, status="RUNNING")
        n = int(run.data.tags.get("distillray.resumed", "0")) + 1
        self.client.set_tag(rid, "distillray.resumed", str(n))
        for k, v in (extra or {}).items():
            self.client.set_tag(rid, k, v)
        return rid, True

    def start(self, kind: str, row: Row, task: str, key: str, extra: dict | None = None) -> str:
        return tracking.start_run(self.client, self.exp_id, f"{self.name}-{row.id}-{task}",
                                  {tracking.TAG_KIND: kind, TAG_REPORT: self.name,
                                   TAG_ROW: row.id, TAG_TASK: task, TAG_CONFIG: key,
                                   "distillray.row_num": row.num, **(extra or {})}, self.parent)


def run_report(cfg: ExperimentConfig, *, name: str | None = None, budget: str = "small",
               rows: list[str] | None = None, row_sets: dict[str, dict[str, Any]] | None = None,
               out: str | Path | None = None, address: str | None = None,
               repeats: tuple[int, int] = (30, 5), warmup: int = 2, threads: int | None = 1,
               lr_grid: tuple[float, ...] | None = None, json_out: str | Path | None = None,
               log: Callable = print) -> ReportResult:
    """Train (or reuse) every cell, measure every row, print and record the table.
    ``lr_grid``: the tuned rows' learning rates (default: the budget's, ``LR_GRID``)."""
    from orchestrator.stages.pipeline import load_data, task_names
    from orchestrator.stages.preflight import check_inputs, preflight

    t0 = time.time()
    if budget not in BUDGETS:
        raise ReportError(f"budget {budget!r}: choose {' or '.join(BUDGETS)}")
    name = name or f"report-{budget}"
    selected = select_rows(rows)
    row_sets = {r: {**BUDGET_ROW_SETS[budget].get(r, {}), **(row_sets or {}).get(r, {})}
                for r in {*BUDGET_ROW_SETS[budget], *(row_sets or {})}}
    grid = LR_GRID[budget] if lr_grid is None else tuple(lr_grid)
    rung = GRID_RUNG[budget]
    tasks = task_names(cfg)
    cfg = with_values(cfg, {"work_root": str(Path(cfg.work_root).resolve()), "tasks": tasks})
    check_inputs(cfg)  # data, teacher, embeddings, NLTK data, stores: before any work or Ray
    ctx = _Report(cfg, name, address, log)
    data = load_data(cfg)
    log(f"[report] {name}: rows {', '.join(r.num for r in selected)} on {', '.join(tasks)}; "
        f"{describe_budget(budget, cfg, data)}")
    row_cfgs = {r.id: row_config(cfg, r, row_sets, tasks) for r in selected}
    for r in selected:  # mixtures, student vs teacher shapes: before any teacher trains
        preflight(row_cfgs[r.id], None, data)

    ctx.parent = _parent_run(ctx, tasks, budget, [r.id for r in selected])
    cells: list[Cell] = []
    teachers_reused: dict[str, bool] = {}
    progress = _Progress(ctx, {r.id: len(tasks) for r in selected})
    try:
        single_cfg = row_config(cfg, ROWS[0], row_sets, tasks)
        ctx.note("stage teachers: one per task" + (" and the multi-task teacher" if any(
            c.teacher.multitask for c in row_cfgs.values()) else ""))
        single_refs, teachers_reused["single"] = _teachers(ctx, single_cfg, data, False)
        multi_refs = None
        if any(c.teacher.multitask for c in row_cfgs.values()):
            multi_cfg = row_config(cfg, ROWS[1], row_sets, tasks)
            multi_refs, teachers_reused["multi"] = _teachers(ctx, multi_cfg, data, True)
        for r in selected:
            c = row_cfgs[r.id]
            refs = multi_refs if c.teacher.multitask else single_refs
            t0_row = time.time()
            if r.kind == "teacher":
                new = _teacher_cells(ctx, r, refs, data, teachers_reused[
                    "multi" if c.teacher.multitask else "single"])
                cells += new
                progress.done(r, new, time.time() - t0_row)
            elif r.kind == "single":
                for t in tasks:
                    t0_cell = time.time()
                    cells.append(_single_cell(ctx, r, c, t, data, refs, grid, rung))
                    progress.done(r, cells[-1:], time.time() - t0_cell)
            else:
                new = _mkd_cells(ctx, r, c, tasks, data, refs)
                cells += new
                progress.done(r, new, time.time() - t0_row)
        t0_measure = time.time()
        perf, ref_note = _measure(ctx, selected, cells, tasks, data, single_refs, multi_refs,
                                  single_cfg, repeats, warmup, threads)
        stages = stage_seconds(selected, cells, single_refs, multi_refs,
                               time.time() - t0_measure,
                               _data_seconds(row_cfgs, single_cfg, data, single_refs, multi_refs))
        flags = _flag(selected, cells, tasks)
        table = build_table(selected, cells, tasks, perf)
        trained = sum(c.status == "trained" for c in cells)
        reused = sum(c.status == "reused" for c in cells)
        failed = sum(c.status == "failed" for c in cells)
        seconds = time.time() - t0
        md = format_markdown(name, table, selected, tasks, data, flags, notes=[
            describe_budget(budget, cfg, data), _tuning_note(selected, cells, grid, cfg, rung),
            ref_note, _stage_note(stages), _reuse_note(cells, teachers_reused, seconds),
            f"MLflow: experiment `{cfg.tracking.experiment}` at `{ctx.uri}`, parent run "
            f"`{ctx.parent}`; every cell is a run: filter `tags.\"{TAG_REPORT}\" = '{name}' and "
            f"tags.\"{tracking.TAG_KIND}\" = '{KIND_CELL}'` and compare `report_*` metrics."])
        _record(ctx, cells, perf, flags, table, md)
        tracking.end_run(ctx.client, ctx.parent, failed == 0,
                         None if failed == 0 else f"{failed} cell(s) failed")
    except BaseException as e:
        tracking.end_run(ctx.client, ctx.parent, False, f"{type(e).__name__}: {e}")
        raise
    out_path = None
    if out:
        out_path = Path(out)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(md)
    log("\n" + md)
    if out_path:
        log(f"[report] table written to {out_path}")
    results = results_json(budget, selected, cells, perf, stages)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(results, indent=1) + "\n")
        log(f"[report] table as JSON written to {json_out}")
    cell_df = pd.DataFrame([{**{k: v for k, v in asdict(c).items() if k != "metrics"},
                             **c.metrics} for c in cells])
    return ReportResult(name, ctx.parent, tasks, [r.id for r in selected], table, cell_df, md,
                        flags, trained, reused, failed, seconds, out_path, results)


def _parent_run(ctx: _Report, tasks: list[str], budget: str, rows: list[str]) -> str:
    runs = tracking.find_runs(ctx.client, ctx.exp_id, {tracking.TAG_KIND: KIND_PARENT,
                                                       TAG_REPORT: ctx.name})
    if runs:
        rid = max(runs, key=lambda r: r.info.start_time).info.run_id
        ctx.client.update_run(rid, status="RUNNING")
        ctx.note(f"continuing report {ctx.name} (MLflow parent run {rid})")
    else:
        rid = tracking.start_run(ctx.client, ctx.exp_id, ctx.name,
                                 {tracking.TAG_KIND: KIND_PARENT, TAG_REPORT: ctx.name})
    for k, v in {"distillray.tasks": ",".join(tasks), "distillray.budget": budget,
                 "distillray.rows": ",".join(rows)}.items():
        ctx.client.set_tag(rid, k, v)
    tracking.log_params(ctx.client, rid, {"report": {"budget": budget}, **ctx.cfg.to_dict()})
    return rid


class _Progress:
    """After each cell: cells done of all, the row's cells done, and the time left for the row
    and for the whole report at this call's pace (a reused cell takes seconds, so the estimate
    counts only cells trained in this call; rows not started yet are estimated at the mean of
    every trained cell so far)."""

    def __init__(self, ctx: _Report, plan: dict[str, int]):
        self.ctx, self.plan = ctx, plan
        self.done_cells: dict[str, int] = {r: 0 for r in plan}
        self.trained: dict[str, list[float]] = {r: [] for r in plan}

    def done(self, row: Row, cells: list[Cell], seconds: float) -> None:
        self.done_cells[row.id] += len(cells)
        if any(c.status == "trained" for c in cells):
            self.trained[row.id] += [seconds / len(cells)] * len(cells)
        every = [x for v in self.trained.values() for x in v]
        mean_all = float(np.mean(every)) if every else 0.0

        def left(r: str) -> float:
            n = self.plan[r] - self.done_cells[r]
            return n * (float(np.mean(self.trained[r])) if self.trained[r] else mean_all)

        total = sum(self.plan.values())
        done = sum(self.done_cells.values())
        row_left = self.plan[row.id] - self.done_cells[row.id]
        self.ctx.note(
            f"progress: {done}/{total} cells; row {row.num} {row.id} "
            f"{self.done_cells[row.id]}/{self.plan[row.id]}"
            + (f", about {duration(left(row.id))} left in the row" if row_left else "")
            + (f"; about {duration(sum(left(r) for r in self.plan))} left in all at this "
               "call's pace" if done < total and every else ""))


def _teacher_seconds(refs) -> float | None:
    """Fine-tuning seconds of these teachers, summed over the calls that trained each
    (``train_info.json``); None when a teacher predates that record."""
    from orchestrator.stages.teacher import TRAIN_INFO_FILE

    total = 0.0
    for path in {r.path for r in (refs or {}).values()}:
        f = Path(path) / TRAIN_INFO_FILE
        if not f.is_file():
            return None
        total += float(json.loads(f.read_text())["seconds"])
    return total


def _data_seconds(row_cfgs: dict[str, ExperimentConfig], single_cfg: ExperimentConfig, data,
                  single_refs, multi_refs) -> dict[str, float | None]:
    """Augmentation (row 4's transfer sets) and bulk labeling (every teacher's soft-label cache)
    seconds, summed over tasks and resumptions."""
    from orchestrator.stages.pipeline import data_stage_seconds

    soft = row_cfgs.get("bilstm_soft", single_cfg)
    single = data_stage_seconds(soft, data, single_refs)
    aug = [v["augment"] for v in single.values()]
    label = sum(v["label"] or 0.0 for v in single.values())
    if multi_refs is not None:
        label += sum(v["label"] or 0.0 for v in data_stage_seconds(
            row_cfgs.get("mkd_bcn", single_cfg), data, multi_refs).values())
    return {"augment": (float(sum(aug)) if "bilstm_soft" in row_cfgs and None not in aug
                        else None), "labeling": label}


def stage_seconds(selected: list[Row], cells: list[Cell], single_refs, multi_refs,
                  measure_s: float, data_s: dict[str, float | None] | None = None
                  ) -> dict[str, float | None]:
    """Compute seconds per stage, summed over every call that contributed: the teachers'
    fine-tuning, augmentation and labeling, then each student row's training (every run it
    trained, the whole grid), and this call's latency measurement."""
    out: dict[str, float | None] = {"teacher": _teacher_seconds(single_refs)}
    if multi_refs is not None:
        out["teacher_mkd"] = _teacher_seconds(multi_refs)
    out.update(data_s or {})
    for r in selected:
        if r.kind == "teacher":
            continue
        runs: dict[str, float] = {}
        for c in cells:
            if c.row == r.id:
                runs.update(c.train_seconds)
        out[r.id] = float(sum(runs.values())) if runs else None
    out["measure"] = measure_s
    return out


def _commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def results_json(budget: str, selected: list[Row], cells: list[Cell], perf: pd.DataFrame,
                 stages: dict[str, float | None]) -> dict[str, Any]:
    """The table as data (``docs/results/full.json``): one entry per (row, task) with the
    task's main dev score and every dev metric x100, size and batch-1 latency of the row's
    model, and how the row picked it."""
    import datetime

    out_cells = []
    for c in cells:
        if "score" not in c.metrics:
            continue
        p = perf.loc[c.row] if c.row in perf.index else None
        out_cells.append({
            "row": c.row, "task": c.task, "score": round(100 * c.metrics["score"], 2),
            "metrics": {k: round(100 * v, 2) for k, v in c.metrics.items() if k != "score"},
            "non_embedding_params": int(p["non_embedding"]) if p is not None else None,
            "latency_ms_b1": round(float(p["latency_b1_ms"]), 4) if p is not None else None,
            "flag": c.flag, "tuning": c.tuning or None})
    return {"commit": _commit(), "date": datetime.date.today().isoformat(), "budget": budget,
            "machine": describe_machine(),
            "stage_seconds": {k: (None if v is None else round(v, 1)) for k, v in stages.items()},
            "rows": [r.id for r in selected], "cells": out_cells}


# ---------------------------------------------------------------------------------------------
# teachers (rows 1a, 1b) and the students' teachers

def _teachers(ctx: _Report, cfg: ExperimentConfig, data, multitask: bool):
    """(refs per task, whether every teacher was already cached)."""
    from orchestrator.search.search import ensure_multitask_teacher, ensure_teachers
    from orchestrator.stages.multitask_teacher import multitask_teacher_key
    from orchestrator.stages.teacher import teacher_key
    from tasks.loaders import data_fingerprint

    root = Path(cfg.work_root) / "teachers"
    if multitask:
        keys = [multitask_teacher_key(cfg.teacher, data)]
    else:
        keys = [teacher_key(cfg.teacher, d.task, data_fingerprint(d.train)) for d in data.values()]
    cached = all((root / k / "metrics.json").is_file() for k in keys)
    if multitask:  # also for a single task: the multi-task stage with one head
        refs = ensure_multitask_teacher(cfg, data, ctx.client, ctx.exp_id, ctx.log)
    else:
        refs = ensure_teachers(cfg, data, ctx.client, ctx.exp_id, ctx.log)
    return refs, cached


def _teacher_metrics(ref, task: str, multitask: bool) -> dict[str, float]:
    m = json.loads((Path(ref.path) / "metrics.json").read_text())
    if multitask:
        prefix = f"{task}_"
        return {k[len(prefix):]: float(v) for k, v in m.items() if k.startswith(prefix)}
    return {k: float(v) for k, v in m.items()}


def _teacher_cells(ctx: _Report, row: Row, refs, data, cached: bool) -> list[Cell]:
    multitask = bool(row.sets.get("teacher.multitask"))
    cells = []
    for t in data:
        ref = refs[t]
        key = content_key({"v": REPORT_VERSION, "row": row.id, "teacher": ref.key, "task": t})
        metrics = _teacher_metrics(ref, t, multitask)
        run = ctx.finished(KIND_CELL, row.id, t, key)
        if run is not None:
            rid = run.info.run_id
        else:
            rid = ctx.start(KIND_CELL, row, t, key, {"distillray.teacher_key": ref.key})
            settings = ctx.cfg.teacher if multitask else ctx.cfg.teacher.for_task(t)
            tracking.log_params(ctx.client, rid, {"teacher": vars(settings) |
                                                  {"multitask": multitask}, "task": t,
                                                  "teacher_path": ref.path})
            tracking.log_metrics(ctx.client, rid, {f"report_{k}": v for k, v in metrics.items()})
            tracking.end_run(ctx.client, rid, True)
        status = "reused" if cached else "trained"
        ctx.note(f"{row.num} {row.id}/{t}: teacher {ref.path} "
                f"({'reused' if cached else 'trained now'}), score {metrics.get('score', float('nan')):.4f}")
        cells.append(Cell(row.id, t, metrics, rid, status, key))
    return cells


# ---------------------------------------------------------------------------------------------
# students (rows 2-5)

def _task_metrics(best: dict[str, float], task: str) -> dict[str, float]:
    from tasks.registry import get_task

    spec = get_task(task)
    return {k: best[f"{task}_{k}"] for k in (*spec.metrics, "score") if f"{task}_{k}" in best}


@dataclass
class _Checkpoint:
    dir: Path
    report: int
    metrics: dict[str, float]
    state: dict[str, Any]


def read_checkpoints(root: Path) -> tuple[_Checkpoint | None, _Checkpoint | None]:
    """(latest, best by dev score) of the complete checkpoints a Ray Train run left under
    ``root``; a directory missing a file or holding unreadable JSON (a copy cut short) is not
    one of them. Ties go to the earlier report."""
    found = []
    for d in sorted(root.glob("checkpoint_*")) if root.is_dir() else []:
        try:
            metrics = json.loads((d / "metrics.json").read_text())
            state = json.loads((d / "train_state.json").read_text())
        except (OSError, ValueError):
            continue
        if (d / "model.safetensors").is_file() and (d / "student.json").is_file():
            found.append(_Checkpoint(d, int(state["report"]), metrics, state))
    if not found:
        return None, None
    latest = max(found, key=lambda c: c.report)
    best = max(found, key=lambda c: (c.metrics.get("dev_score", -np.inf), -c.report))
    return latest, best


@dataclass
class _Trained:
    run_id: str
    best: dict[str, float]  # the best report's metrics
    sizes: dict[str, float]
    seconds: float  # compute seconds of its epochs, over every call that trained it
    status: str  # trained | reused | paused (stopped at a grid's rung)


def _history_sum(client, run_id: str, key: str) -> float:
    """Sum of a metric over its steps, the last value of each step counting once."""
    per_step = {m.step: m.value for m in sorted(client.get_metric_history(run_id, key),
                                                key=lambda m: m.timestamp)}
    return float(sum(per_step.values()))


def _train_point(ctx: _Report, row: Row, cfg: ExperimentConfig, data, refs, task_tag: str,
                 key: str, pause_after: int | None = None) -> _Trained:
    """One student: reused from a FINISHED ``report-train`` run with this key, else trained
    under Ray Train in the newest unfinished run with it (a killed call's, resumed from its
    last checkpoint: the Train run's name is the key's) or a new one. ``pause_after``: train
    only that many reports (a grid's rung); the run is then left KILLED, tagged
    ``distillray.paused_at``, and a later call without it trains on from its checkpoint."""
    from orchestrator.record import outcome
    from orchestrator.stages.pipeline import on_demand_labeler, prepare_bundle
    from orchestrator.stages.preflight import preflight
    from orchestrator.training.distill import distill_one

    run = ctx.finished(KIND_TRAIN, row.id, task_tag, key, close_unfinished=False)
    if run is None and pause_after is not None:  # paused at this rung by an earlier call
        run = next((r for r in ctx.find(KIND_TRAIN, row.id, task_tag, key)
                    if r.info.status == "KILLED"
                    and int(r.data.tags.get("distillray.paused_at", "0")) >= pause_after), None)
    if run is not None and pause_after is not None:
        return _Trained(run.info.run_id, _rung_best(ctx.client, run.info.run_id, pause_after),
                        _transfer_sizes(run.data.metrics),
                        _history_sum(ctx.client, run.info.run_id, "epoch_seconds"), "reused")
    if run is not None:
        m = run.data.metrics
        return _Trained(run.info.run_id, {k[len("best_"):]: v for k, v in m.items()
                                          if k.startswith("best_")}
                        | {"epochs_run": m.get("epochs_run", np.nan)},
                        _transfer_sizes(m),
                        float(m.get("compute_seconds", np.nan)), "reused")
    ctx.ensure_ray(cfg)
    preflight(cfg, None, data, refs)
    bundle = prepare_bundle(cfg, data, refs, ctx.log)
    rid, resumed = ctx.resume_or_start(KIND_TRAIN, row, task_tag, key,
                                       {"distillray.bundle": bundle.key})
    name = f"{ctx.name}-{row.id}-{task_tag.replace(',', '-')}-{key}"
    root = Path(ctx.storage) / name
    try:
        if not resumed:
            tracking.log_params(ctx.client, rid, cfg.to_dict())
            tracking.log_metrics(ctx.client, rid, {
                **{f"transfer_size_{t}": n for t, n in bundle.transfer_sizes.items()},
                "transfer_size": sum(bundle.transfer_sizes.values()),
                "bundle_reused": float(bundle.reused)})
        latest, _ = read_checkpoints(root)
        reached = latest is not None and (latest.state.get("done") or (
            pause_after is not None and latest.report + 1 >= pause_after))
        if latest is not None and not reached:
            ctx.note(f"{row.num} {row.id}/{task_tag}: resuming after report "
                     f"{latest.report + 1} (MLflow run {rid})")
        if not reached:
            with on_demand_labeler(cfg, refs) as labeler:  # None unless soft_labels=on_demand
                distill_one(cfg, bundle.path, run_id=rid, tracking_uri=ctx.uri,
                            storage=ctx.storage, name=name, labeler=labeler,
                            pause_after=pause_after)
        latest, best = read_checkpoints(root)
        if best is None:
            raise RuntimeError(f"the student's Train run left no checkpoint under {root}")
        seconds = _history_sum(ctx.client, rid, "epoch_seconds")
        if pause_after is not None and not latest.state.get("done"):
            ctx.client.set_tag(rid, "distillray.paused_at", str(latest.report + 1))
            ctx.client.set_terminated(rid, "KILLED")
            return _Trained(rid, _rung_best(ctx.client, rid, pause_after),
                            {t: float(n) for t, n in bundle.transfer_sizes.items()}, seconds,
                            "paused")
        outcome.log_checkpoint_dirs(ctx.client, rid, latest.dir, best.dir)
        numeric = {k: float(v) for k, v in best.metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        tracking.log_metrics(ctx.client, rid, {f"best_{k}": v for k, v in numeric.items()}
                             | {"compute_seconds": seconds,
                                "epochs_run": float(latest.metrics.get("epoch", np.nan))})
        tracking.end_run(ctx.client, rid, True)
    except BaseException as e:
        tracking.end_run(ctx.client, rid, False, f"{type(e).__name__}: {e}")
        raise
    return _Trained(rid, numeric | {"epochs_run": float(latest.metrics.get("epoch", np.nan))},
                    {t: float(n) for t, n in bundle.transfer_sizes.items()}, seconds, "trained")


def _transfer_sizes(metrics: dict[str, float]) -> dict[str, float]:
    """Each task's transfer-set size, as a train run logs it (``transfer_size_<task>``)."""
    return {k[len("transfer_size_"):]: v for k, v in metrics.items()
            if k.startswith("transfer_size_")}


def _rung_best(client, run_id: str, reports: int) -> dict[str, float]:
    """The best dev metrics among a train run's first ``reports`` reports (MLflow steps
    1..reports), as a paused and a finished run both hold them."""
    hist = {}
    for key in ("dev_score", "epoch"):
        hist[key] = {m.step: m.value for m in sorted(client.get_metric_history(run_id, key),
                                                      key=lambda m: m.timestamp)
                     if m.step <= reports}
    if not hist["dev_score"]:
        return {"dev_score": -np.inf}
    step = max(hist["dev_score"], key=lambda k: (hist["dev_score"][k], -k))
    return {"dev_score": hist["dev_score"][step], "epoch": hist["epoch"].get(step, np.nan)}


def _fmt_lr(v: float) -> str:
    return f"{v:g}"


def _single_cell(ctx: _Report, row: Row, cfg: ExperimentConfig, task: str, data, refs,
                 grid: tuple[float, ...], rung: int | None = None) -> Cell:
    """Rows 2-4 and 6: one student per task; a tuned row trains one per ``grid`` learning rate
    and keeps the best on dev (ties: the first). ``rung``: each learning rate first trains that
    many reports, and only the best of them at that point trains on (:data:`GRID_RUNG`)."""
    c = with_values(cfg, {"tasks": [task], "data.task": task})
    sub, sub_refs = {task: data[task]}, {task: refs[task]}
    lrs = tuple(grid) if row.tuned and grid else (c.train.lr,)
    rung = rung if len(lrs) > 1 else None
    points = [with_overrides(c, {"train.lr": lr}) for lr in lrs]
    keys = [cell_key(row, pc, sub, sub_refs) for pc in points]
    key = (keys[0] if len(keys) == 1 else
           content_key({"grid": keys, **({"rung": rung} if rung else {})}))
    run = ctx.finished(KIND_CELL, row.id, task, key)
    if run is not None:
        m = _read_metrics(run, task)
        ctx.note(f"{row.num} {row.id}/{task}: reused MLflow run {run.info.run_id} "
                 f"(FINISHED, config key {key}), score {m.get('score', float('nan')):.4f}")
        return Cell(row.id, task, m, run.info.run_id, "reused", key,
                    run.data.tags.get("distillray.train_run"),
                    run.data.metrics.get("transfer_size"),
                    tuning=json.loads(run.data.tags.get("distillray.tuning", "{}")),
                    train_seconds=json.loads(run.data.tags.get("distillray.train_seconds", "{}")))
    trained: list[_Trained] = []
    for lr, pc, pkey in zip(lrs, points, keys):
        ctx.note(f"{row.num} {row.id}/{task}: "
                 + (f"lr {_fmt_lr(lr)} ({len(trained) + 1}/{len(lrs)}), " if len(lrs) > 1 else "")
                 + (f"first {rung} report(s), " if rung else "") + f"config key {pkey}")
        try:
            trained.append(_train_point(ctx, row, pc, sub, sub_refs, task, pkey, rung))
        except Exception as e:  # noqa: BLE001 - one failed cell does not hide the others
            return _failed(ctx, row, task, key, e)
    scores = [t.best.get(f"{task}_score", t.best.get("dev_score", -np.inf)) for t in trained]
    pick = int(np.argmax(scores))
    rung_scores = None
    if rung:  # the rung's winner trains on to the end (resumed from its checkpoint)
        rung_scores = scores
        ctx.note(f"{row.num} {row.id}/{task}: after {rung} report(s) lr {_fmt_lr(lrs[pick])} "
                 f"leads ({', '.join(f'{x:.4f}' for x in scores)}); training it on")
        try:
            final = _train_point(ctx, row, points[pick], sub, sub_refs, task, keys[pick])
        except Exception as e:  # noqa: BLE001
            return _failed(ctx, row, task, key, e)
        trained[pick] = final
        scores = [float(x) if i != pick else
                  final.best.get(f"{task}_score", final.best.get("dev_score", -np.inf))
                  for i, x in enumerate(scores)]
    chosen = trained[pick]
    m = _task_metrics(chosen.best, task)
    tuning = {"lr": lrs[pick], "lr_grid": list(lrs) if len(lrs) > 1 else None,
              "grid_scores": [float(x) for x in scores] if len(lrs) > 1 and not rung else None,
              "rung": rung, "rung_scores": [float(x) for x in rung_scores] if rung else None,
              "best_epoch": chosen.best.get("epoch"), "epochs_run": chosen.best.get("epochs_run"),
              "patience": c.train.patience, "max_epochs": c.train.epochs}
    seconds = {t.run_id: t.seconds for t in trained}
    rid = ctx.start(KIND_CELL, row, task, key, {
        "distillray.train_run": chosen.run_id,
        "distillray.train_seconds": json.dumps(seconds), "distillray.tuning": json.dumps(tuning)})
    tracking.log_params(ctx.client, rid, {"train_run": chosen.run_id,
                                          **c.to_dict()})
    tracking.log_metrics(ctx.client, rid, {f"report_{k}": v for k, v in m.items()}
                         | {"transfer_size": float(sum(chosen.sizes.values()))})
    tracking.end_run(ctx.client, rid, True)
    status = ("trained" if any(t.status in ("trained", "paused") for t in trained)
              else "reused")
    ctx.note(f"{row.num} {row.id}/{task}: {status}, score {m.get('score', float('nan')):.4f}"
             + (f" (lr {_fmt_lr(lrs[pick])} of {', '.join(map(_fmt_lr, lrs))}"
                + (f", picked after {rung} report(s)" if rung else "") + ": "
                + f"{', '.join(f'{x:.4f}' for x in scores)})" if len(lrs) > 1 else ""))
    return Cell(row.id, task, m, rid, status, key, chosen.run_id,
                float(sum(chosen.sizes.values())), tuning=tuning, train_seconds=seconds)


def _mkd_cells(ctx: _Report, row: Row, cfg: ExperimentConfig, tasks: list[str], data,
               refs) -> list[Cell]:
    joint = ",".join(tasks)
    key = cell_key(row, cfg, data, refs)
    ctx.note(f"{row.num} {row.id}: jointly on {joint} (config key {key})")
    try:
        t = _train_point(ctx, row, cfg, data, refs, joint, key)
    except Exception as e:  # noqa: BLE001
        return [_failed(ctx, row, task, key, e, log=task == tasks[0]) for task in tasks]
    if t.status == "reused":
        ctx.note(f"{row.num} {row.id}: reused joint MLflow run {t.run_id} (FINISHED)")
    tuning = {"lr": cfg.train.lr, "best_epoch": t.best.get("epoch"),
              "epochs_run": t.best.get("epochs_run"), "patience": cfg.train.patience,
              "max_epochs": cfg.train.epochs, "finetune_epochs": cfg.train.finetune_epochs}
    cells = []
    for task in tasks:
        m = _task_metrics(t.best, task)
        cell = ctx.finished(KIND_CELL, row.id, task, key)
        if cell is None or cell.data.tags.get("distillray.train_run") != t.run_id:
            rid = ctx.start(KIND_CELL, row, task, key, {"distillray.train_run": t.run_id})
            tracking.log_params(ctx.client, rid, {"train_run": t.run_id, **cfg.to_dict()})
            tracking.log_metrics(ctx.client, rid, {f"report_{k}": v for k, v in m.items()})
            tracking.end_run(ctx.client, rid, True)
        else:
            rid = cell.info.run_id
        ctx.note(f"{row.num} {row.id}/{task}: {t.status}, score {m.get('score', float('nan')):.4f}")
        cells.append(Cell(row.id, task, m, rid, t.status, key, t.run_id, t.sizes.get(task),
                          tuning=tuning, train_seconds={t.run_id: t.seconds}))
    return cells


def _read_metrics(run, task: str) -> dict[str, float]:
    return {k[len("report_"):]: v for k, v in run.data.metrics.items()
            if k.startswith("report_") and k[len("report_"):] in _metric_names(task)}


def _metric_names(task: str) -> tuple[str, ...]:
    from tasks.registry import get_task
    return (*get_task(task).metrics, "score")


def _failed(ctx: _Report, row: Row, task: str, key: str, e: Exception, log: bool = True) -> Cell:
    msg = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    if log:
        ctx.note(f"{row.num} {row.id}/{task}: FAILED: {msg}")
    return Cell(row.id, task, {}, None, "failed", key, error=msg)


# ---------------------------------------------------------------------------------------------
# size and latency, all rows in one interleaved measurement

class _StudentCall(nn.Module):
    """A saved student behind ``measure()``'s ``model(**inputs)`` call, for one task."""

    def __init__(self, model: nn.Module, task: str, wordpiece: bool):
        super().__init__()
        self.model, self.task, self.wordpiece = model, task, wordpiece

    def forward(self, ids_a, ids_b=None, token_type_ids=None):
        if self.wordpiece:
            return self.model(ids_a, None, self.task, token_type_ids=token_type_ids)
        return self.model(ids_a, ids_b, self.task)

    def non_embedding_parameters(self) -> int:
        from students.factory import count_parameters
        return count_parameters(self.model)["non_embedding"]


class _TeacherCall(nn.Module):
    def __init__(self, teacher, head: str):
        super().__init__()
        self.model = teacher.model
        self.teacher, self.head = teacher, head

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.teacher.logits(input_ids, attention_mask, token_type_ids, head=self.head)


def _ids(batch: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1000 + batch)
    low = min(5, max(1, vocab - 1))
    return torch.randint(low, max(low + 1, vocab), (batch, max(1, length)), generator=g)


def _reference_lengths(data, task: str, tokenizer, teacher_max: int, student_max: int):
    """Mean dev lengths of ``task``: words per text (student tokenizer), wordpieces of the
    (pair) input incl. special tokens (teacher tokenizer)."""
    from tasks.text import tokenize

    dev = next(iter(data[task].dev.values()))
    words_a = round(float(np.mean([min(len(tokenize(e.text_a)), student_max) for e in dev])))
    words_b = round(float(np.mean([min(len(tokenize(e.text_b)), student_max) for e in dev]))) \
        if dev and dev[0].text_b is not None else None
    enc = tokenizer([e.text_a for e in dev],
                    [e.text_b for e in dev] if words_b is not None else None,
                    truncation=True, max_length=teacher_max)
    pieces = round(float(np.mean([len(x) for x in enc["input_ids"]])))
    return words_a, words_b, pieces


def _measure(ctx: _Report, selected: list[Row], cells: list[Cell], tasks: list[str], data,
             single_refs, multi_refs, cfg: ExperimentConfig, repeats: tuple[int, int],
             warmup: int, threads: int | None) -> tuple[pd.DataFrame, str]:
    """Non-embedding params and median batch-1 / batch-64 latency per row (the reference
    task's model), BERT-base and the teacher among them; ratios vs both."""
    from orchestrator.record.registry import download_student
    from orchestrator.teachers.teacher_model import load_teacher
    from orchestrator.training.train import load_student

    from orchestrator.training import probe
    ref = tasks[0]
    teacher = load_teacher(single_refs[ref].path)
    words_a, words_b, pieces = _reference_lengths(data, ref, teacher.tokenizer,
                                                  cfg.teacher.max_length, cfg.student.max_length)
    benches: dict[str, Any] = {}
    tvocab = len(teacher.tokenizer)

    def hf_inputs(vocab: int):
        def make(b: int) -> dict:
            ids = _ids(b, pieces, vocab, 1)
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                    "token_type_ids": torch.zeros_like(ids)}
        return make

    benches["teacher"] = probe.Bench(_TeacherCall(teacher, ref), hf_inputs(tvocab),
                                     "fine-tuned teacher", pieces)
    with tempfile.TemporaryDirectory(prefix="distillray-report-") as tmp:
        for r in selected:
            if r.kind == "teacher":
                if r.id == "teacher_mkd" and multi_refs is not None:
                    mt = load_teacher(multi_refs[ref].path)
                    benches[r.id] = probe.Bench(_TeacherCall(mt, ref), hf_inputs(len(mt.tokenizer)),
                                                "multi-task teacher", pieces)
                continue
            cell = next((c for c in cells if c.row == r.id and c.task == ref), None)
            if cell is None or cell.train_run_id is None:
                continue
            dst = Path(tmp) / r.id
            dst.mkdir()
            try:
                model, info = load_student(download_student(ctx.client, cell.train_run_id, dst))
            except (OSError, LookupError, ValueError) as e:  # the row stays, without timings
                ctx.note(f"{r.num} {r.id}: student of run {cell.train_run_id} not measured: {e}")
                continue
            meta = info["meta"]
            wordpiece = meta["encoding"] == "wordpiece"
            vocab = int(meta["vocab_size"])
            if wordpiece:
                n = min(pieces, cfg.student.max_length)
                make = (lambda v, n: lambda b: {"ids_a": _ids(b, n, v, 2),
                                                "token_type_ids": torch.zeros((b, n), dtype=torch.long)}
                        )(vocab, n)
                seq = n
            else:
                pair = words_b is not None and getattr(model, "pair", True)
                make = (lambda v, pair: lambda b: {
                    "ids_a": _ids(b, words_a, v, 3),
                    **({"ids_b": _ids(b, words_b, v, 4)} if pair else {})})(vocab, pair)
                seq = words_a
            benches[r.id] = probe.Bench(_StudentCall(model, ref, wordpiece), make,
                                        info["student"]["arch"], seq)
        base = probe.default_models(words_a, pieces, include=[probe.BASE])[probe.BASE]
        benches[BERT_BASE] = base
        ctx.note(f"measuring {len(benches)} models on {ref} inputs "
                f"({words_a} words{f' + {words_b}' if words_b is not None else ''} / {pieces} "
                f"wordpieces), b=1 x{repeats[0]}, b=64 x{repeats[1]}, {threads} thread(s)")
        df = probe.measure(benches, (1, 64), {1: repeats[0], 64: repeats[1]}, warmup, threads)
    for ref_row, tag in (("teacher", "teacher"), (BERT_BASE, "bert_base")):
        df[f"x_fewer_params_vs_{tag}"] = df.loc[ref_row, "non_embedding"] / df["non_embedding"]
        for bs in (1, 64):
            df[f"x_faster_b{bs}_vs_{tag}"] = df.loc[ref_row, f"latency_b{bs}_ms"] / df[f"latency_b{bs}_ms"]
    note = (f"Size and CPU latency: each row's model for {ref} (MKD rows: the joint student); "
            f"non-embedding parameters (outside nn.Embedding tables); median of {repeats[0]} "
            f"(batch 1) / {repeats[1]} (batch 64) forward passes, interleaved across all rows "
            f"in this run, {threads} torch thread(s), inputs of the {ref} dev mean length "
            f"({words_a} words{f' + {words_b}' if words_b is not None else ''} for word "
            f"students, {pieces} wordpieces for Transformers). Ratios: the teacher's (row 1a) "
            f"or BERT-base's value / the row's (x fewer params, x faster). BERT-base: "
            f"transformers BertConfig() defaults (12 x 768), random weights, not trained.")
    return df, note


# ---------------------------------------------------------------------------------------------
# flags, the table, the record

def _flag(selected: list[Row], cells: list[Cell], tasks: list[str]) -> list[str]:
    by = {(c.row, c.task): c for c in cells}
    present = {r.id for r in selected}
    nums = {r.id: r.num for r in ROWS}
    flags = []
    for r in selected:
        for t in tasks:
            c = by.get((r.id, t))
            if c is None or "score" not in c.metrics:
                continue
            losses = []
            for b in r.baselines:
                bc = by.get((b, t))
                if b in present and bc is not None and "score" in bc.metrics \
                        and not c.metrics["score"] > bc.metrics["score"]:
                    losses.append(f"row {nums[b]} {b} ({100 * bc.metrics['score']:.1f})")
            if losses:
                c.flag = "does not beat " + " and ".join(losses)
                flags.append(f"row {r.num} {r.id} on {t}: score {100 * c.metrics['score']:.1f} "
                             f"{c.flag}")
    return flags


def build_table(selected: list[Row], cells: list[Cell], tasks: list[str],
                perf: pd.DataFrame) -> pd.DataFrame:
    """One line per row (and BERT-base): per-task metrics and score (x1, not %), the mean score,
    size, latency, ratios, how many cells were trained / reused / failed."""
    by = {(c.row, c.task): c for c in cells}
    lines = []
    for r in [*selected, None]:
        rid = r.id if r else BERT_BASE
        line: dict[str, Any] = {"row": rid, "num": r.num if r else "ref",
                                "model": r.label if r else "BERT-base (architecture only)"}
        scores = []
        for t in tasks:
            c = by.get((rid, t))
            for k in _metric_names(t):
                line[f"{t}_{k}"] = c.metrics.get(k, np.nan) if c else np.nan
            line[f"{t}_flag"] = c.flag if c else None
            if c and "score" in c.metrics:
                scores.append(c.metrics["score"])
        line["avg_score"] = float(np.mean(scores)) if r and len(scores) == len(tasks) else np.nan
        if rid in perf.index:
            p = perf.loc[rid]
            line.update({"non_embedding_params": float(p["non_embedding"]),
                         "latency_b1_ms": float(p["latency_b1_ms"]),
                         "latency_b64_ms": float(p["latency_b64_ms"]),
                         **{k: float(p[k]) for k in perf.columns if k.startswith("x_")}})
        row_cells = [c for c in cells if c.row == rid]
        line["trained"] = sum(c.status == "trained" for c in row_cells)
        line["reused"] = sum(c.status == "reused" for c in row_cells)
        line["failed"] = sum(c.status == "failed" for c in row_cells)
        lines.append(line)
    return pd.DataFrame(lines).set_index("row")


def _fmt_params(n: float) -> str:
    if n != n:
        return "—"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{int(n):,}"


def _fmt_ratio(v: float) -> str:
    """x fewer / x faster: 1/N for ratios below 1 (N times more / slower)."""
    if v != v or v <= 0:
        return "—"
    if v < 1 / 1.05:
        return f"1/{_fmt_ratio(1 / v)}"
    return f"{v:.0f}x" if v >= 100 else f"{v:.1f}x"


def format_markdown(name: str, table: pd.DataFrame, selected: list[Row], tasks: list[str], data,
                    flags: list[str], notes: list[str]) -> str:
    from tasks.registry import get_task

    specs = {t: get_task(t) for t in tasks}
    head = ["#", "model"]
    for t in tasks:
        s = specs[t]
        head.append(f"{s.glue_dir or t} {'/'.join(METRIC_SHORT.get(m, m) for m in s.metrics)}")
    head += ["avg", "non-emb params", "b=1 ms", "b=64 ms", "x fewer params (T / BB)",
             "x faster b=1 (T / BB)", "x faster b=64 (T / BB)", "cells"]
    lines = [f"## distillray report `{name}`", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rid, r in table.iterrows():
        vals = [str(r["num"]), str(r["model"])]
        for t in tasks:
            ms = [r.get(f"{t}_{m}") for m in specs[t].metrics]
            if rid == BERT_BASE:
                vals.append("—")
            elif all(v != v or v is None for v in ms):
                vals.append("failed" if r["failed"] else "—")
            else:
                cell = " / ".join(f"{100 * v:.1f}" for v in ms)
                flag = r.get(f"{t}_flag")  # None becomes NaN in a column that has flags
                vals.append(cell + (" ⚠" if isinstance(flag, str) and flag else ""))
        vals.append("—" if r["avg_score"] != r["avg_score"] else f"{100 * r['avg_score']:.1f}")
        lat = r.get("latency_b1_ms")
        if lat is not None and lat == lat:
            vals += [_fmt_params(r["non_embedding_params"]), f"{r['latency_b1_ms']:.2f}",
                     f"{r['latency_b64_ms']:.1f}"]
            for a, b in (("x_fewer_params_vs_teacher", "x_fewer_params_vs_bert_base"),
                         ("x_faster_b1_vs_teacher", "x_faster_b1_vs_bert_base"),
                         ("x_faster_b64_vs_teacher", "x_faster_b64_vs_bert_base")):
                vals.append(f"{_fmt_ratio(r[a])} / {_fmt_ratio(r[b])}")
        else:
            vals += ["—"] * 6
        vals.append("—" if rid == BERT_BASE else
                    ", ".join(f"{int(r[k])} {k}" for k in ("trained", "reused", "failed") if r[k]))
        lines.append("| " + " | ".join(vals) + " |")
    lines += ["", "Dev scores x100 (task metrics in the header's order; `avg` = mean of the task "
              "scores, each the mean of its metrics, GLUE style). T = teacher (row 1a), BB = "
              "BERT-base. ⚠ = does not beat its baseline (row 4 vs rows 2 and 3; MKD rows vs "
              "row 3 and the same student distilled per task, 6a / 6b, on the same data; "
              "row 1b vs row 1a)."]
    lines += ["", "**Flags**" if flags else "**Flags**: none, every row beats its baselines."]
    lines += [f"- {f}" for f in flags]
    lines += [""] + [f"- {n}" for n in notes if n]
    return "\n".join(lines) + "\n"


def _tuning_note(selected: list[Row], cells: list[Cell], grid: tuple[float, ...],
                 cfg: ExperimentConfig, rung: int | None = None) -> str:
    t = cfg.train
    epochs = (f"up to {t.epochs} epochs, stopped after {t.patience} without a better dev score, "
              "the best epoch kept" if t.patience is not None else
              f"{t.epochs} epochs, the best epoch on dev kept")
    tuned = [r.num for r in selected if r.tuned]
    lr = (f"rows {', '.join(tuned)} each pick train.lr from {{{', '.join(map(_fmt_lr, grid))}}} "
          "on dev (the same grid for the gold-label and the distilled BiLSTMs"
          + (f"; each lr trains {rung} epoch(s), then only the one with the best dev score so far "
             "trains on" if rung else "")
          + "); the others use the fixed lr above" if grid and tuned else
          "every student row uses the fixed lr above")
    return f"Tuning: students train {epochs}; {lr}. Teachers keep their best epoch on dev."


def _stage_note(stages: dict[str, float | None]) -> str:
    parts = [f"{k} {'—' if v is None else duration(v)}" for k, v in stages.items()]
    return ("Compute time per stage, summed over every call that contributed: "
            + ", ".join(parts) + ".")


def results_markdown(results: dict[str, Any]) -> str:
    """The README's table from :func:`results_json`'s output (its only source): one line per
    row, each task's metrics x100 (main score first), the mean score, size, batch-1 latency."""
    from tasks.registry import get_task

    tasks = list(dict.fromkeys(c["task"] for c in results["cells"]))
    by = {(c["row"], c["task"]): c for c in results["cells"]}
    labels = {r.id: (r.num, r.label) for r in ROWS}
    head = ["#", "model"]
    for t in tasks:
        spec = get_task(t)
        head.append(f"{spec.glue_dir or t} "
                    f"{'/'.join(METRIC_SHORT.get(m, m) for m in spec.metrics)}")
    head += ["avg", "non-emb params", "b=1 ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rid in results["rows"]:
        num, label = labels.get(rid, ("", rid))
        vals, scores, size, lat = [num, label], [], None, None
        for t in tasks:
            c = by.get((rid, t))
            if c is None:
                vals.append("—")
                continue
            ms = [c["metrics"].get(m) for m in get_task(t).metrics]
            vals.append(" / ".join("—" if v is None else f"{v:.1f}" for v in ms)
                        + (" ⚠" if c.get("flag") else ""))
            scores.append(c["score"])
            size = c["non_embedding_params"] if size is None else size
            lat = c["latency_ms_b1"] if lat is None else lat
        vals.append(f"{np.mean(scores):.1f}" if len(scores) == len(tasks) else "—")
        vals.append("—" if size is None else _fmt_params(size))
        vals.append("—" if lat is None else f"{lat:.2f}")
        lines.append("| " + " | ".join(vals) + " |")
    stages = ", ".join(f"{k} {'—' if v is None else duration(v)}"
                       for k, v in results["stage_seconds"].items())
    lines += ["", f"Budget `{results['budget']}`, commit `{results['commit']}`, "
              f"{results['date']}, {results['machine']}. Compute time per stage (summed over "
              f"resumptions): {stages}. ⚠: does not beat its baseline."]
    return "\n".join(lines) + "\n"


def _reuse_note(cells: list[Cell], teachers_reused: dict[str, bool], seconds: float) -> str:
    tr = sum(c.status == "trained" for c in cells)
    ru = sum(c.status == "reused" for c in cells)
    fa = sum(c.status == "failed" for c in cells)
    t = ", ".join(f"{k}-task teacher(s) {'reused' if v else 'trained'}"
                  for k, v in teachers_reused.items())
    return (f"This call: {tr} cell(s) trained, {ru} reused from finished MLflow runs"
            f"{f', {fa} FAILED' if fa else ''}; {t}; {seconds:.0f} s wall time.")


def _record(ctx: _Report, cells: list[Cell], perf: pd.DataFrame, flags: list[str],
            table: pd.DataFrame, md: str) -> None:
    """Size, latency and ratios on every cell run; flags and current-ness as tags; the table as
    the parent's artifacts."""
    client = ctx.client
    current = set()
    for c in cells:
        if c.run_id is None:
            continue
        current.add(c.run_id)
        if c.row in perf.index:
            p = perf.loc[c.row]
            tracking.log_metrics(client, c.run_id, {
                "report_non_embedding_params": float(p["non_embedding"]),
                "report_latency_b1_ms": float(p["latency_b1_ms"]),
                "report_latency_b64_ms": float(p["latency_b64_ms"]),
                **{f"report_{k}": float(p[k]) for k in perf.columns if k.startswith("x_")}})
        client.set_tag(c.run_id, "distillray.flag", c.flag or "none")
        client.set_tag(c.run_id, "distillray.last_call", c.status)
        client.set_tag(c.run_id, "distillray.current", "true")
    for r in tracking.find_runs(client, ctx.exp_id, {tracking.TAG_KIND: KIND_CELL,
                                                      TAG_REPORT: ctx.name}):
        if r.info.run_id not in current and r.data.tags.get("distillray.current") != "false":
            client.set_tag(r.info.run_id, "distillray.current", "false")
    if BERT_BASE in perf.index:
        p = perf.loc[BERT_BASE]
        tracking.log_metrics(client, ctx.parent, {
            "bert_base_non_embedding_params": float(p["non_embedding"]),
            "bert_base_latency_b1_ms": float(p["latency_b1_ms"]),
            "bert_base_latency_b64_ms": float(p["latency_b64_ms"])})
    tracking.log_metrics(client, ctx.parent, {
        "cells_trained": sum(c.status == "trained" for c in cells),
        "cells_reused": sum(c.status == "reused" for c in cells),
        "cells_failed": sum(c.status == "failed" for c in cells), "flags": len(flags)})
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "report.md").write_text(md)
        table.reset_index().to_csv(Path(d) / "report.csv", index=False)
        client.log_artifact(ctx.parent, str(Path(d) / "report.md"))
        client.log_artifact(ctx.parent, str(Path(d) / "report.csv"))
    tracking.log_dict_artifact(client, ctx.parent, {
        "cells": [asdict(c) for c in cells], "flags": flags}, "report_cells.json")
