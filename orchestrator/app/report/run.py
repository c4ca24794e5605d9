"""One report call (``run_report``): its parent run, progress, stage seconds, the table as JSON."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from orchestrator.app.report.context import _Report
from orchestrator.app.report.measure import _measure
from orchestrator.app.report.rows import (BUDGET_ROW_SETS, BUDGETS, GRID_RUNG, KIND_CELL,
                                          KIND_PARENT, LR_GRID, ROWS, TAG_REPORT, Cell,
                                          ReportError, Row, combine_seeds, describe_budget,
                                          row_config, score_std, select_rows, task_config,
                                          teacher_source)
from orchestrator.app.report.students import _mkd_cells, _single_cell
from orchestrator.app.report.table import (_flag, _record, _reuse_note, _stage_note,
                                           _tuning_note, build_table, format_markdown)
from orchestrator.app.report.teachers import _teacher_cells, _teachers
from orchestrator.config import ExperimentConfig, with_values
from orchestrator.runtime import tracking
from orchestrator.runtime.machine import describe as describe_machine
from orchestrator.runtime.progress import duration
from orchestrator.runtime.redact import redact


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


def run_report(cfg: ExperimentConfig, *, name: str | None = None, budget: str = "small",
               rows: list[str] | None = None, row_sets: dict[str, dict[str, Any]] | None = None,
               out: str | Path | None = None, address: str | None = None,
               repeats: tuple[int, int] = (30, 5), warmup: int = 2, threads: int | None = 1,
               lr_grid: tuple[float, ...] | None = None, json_out: str | Path | None = None,
               seeds: tuple[int, ...] | None = None, log: Callable = print) -> ReportResult:
    """Train (or reuse) every cell, measure every row, print and record the table.
    ``lr_grid``: the tuned rows' learning rates (default: the budget's, ``LR_GRID``).
    ``seeds``: every student cell trains once per seed (``train.seed``) and reports the mean,
    each seed's score and their standard deviation (default: the config's one seed)."""
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
    seeds = tuple(dict.fromkeys(seeds)) if seeds else (cfg.train.seed,)
    tasks = task_names(cfg)
    cfg = with_values(cfg, {"work_root": str(Path(cfg.work_root).resolve()), "tasks": tasks})
    check_inputs(cfg, log=log)  # data, teacher, embeddings, NLTK data, stores: before work or Ray
    ctx = _Report(cfg, name, address, log)
    data = load_data(cfg)
    log(f"[report] {name}: rows {', '.join(r.num for r in selected)} on {', '.join(tasks)}; "
        f"seeds {', '.join(map(str, seeds))}; {describe_budget(budget, cfg, data)}")
    row_cfgs = {r.id: row_config(cfg, r, row_sets, tasks) for r in selected}
    # every single-task cell's config, the budget's per-task settings in it: checked up front
    cell_cfgs = {(r.id, t): task_config(row_cfgs[r.id], r.id, t, budget, row_sets)
                 for r in selected if r.kind == "single" for t in tasks}
    for r in selected:  # mixtures, student vs teacher shapes: before any teacher trains
        preflight(row_cfgs[r.id], None, data)

    ctx.parent = _parent_run(ctx, tasks, budget, [r.id for r in selected])
    cells: list[Cell] = []  # one per (row, task), over the seeds
    runs: list[Cell] = []  # one per (row, task, seed): every cell run, for the record
    progress = _Progress(ctx, {r.id: len(tasks) * (1 if r.kind == "teacher" else len(seeds))
                               for r in selected})
    try:
        single_cfg = row_config(cfg, ROWS[0], row_sets, tasks)
        teachers = _TeacherSources(ctx, data, single_cfg,
                                   {r.id: row_cfgs[r.id] for r in selected})
        for r in selected:
            c = row_cfgs[r.id]
            refs = teachers.refs(c)
            t0_row = time.time()
            if r.kind == "teacher":
                new = _teacher_cells(ctx, r, refs, data, teachers.reused(c))
                cells += new
                runs += new
                progress.done(r, new, time.time() - t0_row)
                continue
            per_seed: dict[str, list[Cell]] = {t: [] for t in tasks}
            for seed in seeds:
                if r.kind == "single":
                    for t in tasks:
                        t0_cell = time.time()
                        sc = with_values(cell_cfgs[r.id, t], {"train.seed": seed})
                        per_seed[t].append(_single_cell(ctx, r, sc, t, data, refs, grid, rung))
                        progress.done(r, per_seed[t][-1:], time.time() - t0_cell)
                else:
                    t0_seed = time.time()
                    new = _mkd_cells(ctx, r, with_values(c, {"train.seed": seed}), tasks, data,
                                     refs, grid, rung)
                    for cell in new:
                        per_seed[cell.task].append(cell)
                    progress.done(r, new, time.time() - t0_seed)
            for t in tasks:
                runs += per_seed[t]
                cells.append(combine_seeds(per_seed[t], list(seeds)))
        t0_measure = time.time()
        perf, ref_note = _measure(ctx, selected, cells, tasks, data, teachers.single, teachers.by_row,
                                  single_cfg,
                                  repeats, warmup, threads)
        stages = stage_seconds(selected, cells, teachers, time.time() - t0_measure,
                               _data_seconds(row_cfgs, single_cfg, data, teachers))
        flags = _flag(selected, cells, tasks)
        table = build_table(selected, cells, tasks, perf)
        trained = sum(c.status == "trained" for c in runs)
        reused = sum(c.status == "reused" for c in runs)
        failed = sum(c.status == "failed" for c in runs)
        seconds = time.time() - t0
        md = format_markdown(name, table, selected, tasks, data, flags, notes=[
            describe_budget(budget, cfg, data), _tuning_note(selected, cells, grid, cfg, rung),
            _seeds_note(seeds), ref_note, _stage_note(stages),
            _reuse_note(runs, teachers.reused_by_source, seconds),
            f"MLflow: experiment `{cfg.tracking.experiment}` at `{redact(ctx.uri)}`, parent run "
            f"`{ctx.parent}`; every cell is a run: filter `tags.\"{TAG_REPORT}\" = '{name}' and "
            f"tags.\"{tracking.TAG_KIND}\" = '{KIND_CELL}'` and compare `report_*` metrics."])
        _record(ctx, runs, perf, flags, table, md)
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


class _TeacherSources:
    """The teachers of every selected row, each kind trained (or reused) once: the single-task
    teachers always (the size and latency reference), the multi-task teacher and its per-task
    refinements when a row needs them (:func:`teacher_source`)."""

    def __init__(self, ctx: _Report, data, single_cfg: ExperimentConfig,
                 row_cfgs: dict[str, ExperimentConfig]):
        self.ctx, self.data = ctx, data
        self._refs: dict[str, tuple[dict, bool]] = {}  # teacher settings (JSON) -> refs, reused
        self.reused_by_source: dict[str, bool] = {}
        self.seconds: dict[str, float | None] = {}  # stage -> fine-tuning seconds
        wanted = {teacher_source(c) for c in row_cfgs.values()}
        ctx.note("stage teachers: one per task" + "".join(
            f", {d}" for s, d in (("multi", "the multi-task teacher"),
                                  ("refined", "the multi-task teacher refined per task"))
            if s in wanted))
        self.single = self.refs(single_cfg)
        self.seconds["teacher"] = _teacher_seconds(self.single)
        for c in row_cfgs.values():
            refs = self.refs(c)
            if teacher_source(c) == "refined":  # the multi-task teacher it came from
                base = self.refs(with_values(c, {"teacher.refine_epochs": 0.0}))
                self.seconds.setdefault("teacher_mkd", _teacher_seconds(base))
                self.seconds.setdefault("teacher_refine", _teacher_seconds(refs))
            elif teacher_source(c) == "multi":
                self.seconds.setdefault("teacher_mkd", _teacher_seconds(refs))
        self.by_row = {r: self.refs(c) for r, c in row_cfgs.items()}

    def refs(self, cfg: ExperimentConfig) -> dict:
        key = json.dumps(asdict(cfg.teacher), sort_keys=True, default=str)
        if key not in self._refs:
            refs, cached = _teachers(self.ctx, cfg, self.data, cfg.teacher.multitask)
            self._refs[key] = (refs, cached)
            src = teacher_source(cfg)
            self.reused_by_source[src] = self.reused_by_source.get(src, True) and cached
        return self._refs[key][0]

    def reused(self, cfg: ExperimentConfig) -> bool:
        self.refs(cfg)
        return self._refs[json.dumps(asdict(cfg.teacher), sort_keys=True, default=str)][1]


def _seeds_note(seeds: tuple[int, ...]) -> str:
    if len(seeds) == 1:
        return f"Seeds: one (train.seed {seeds[0]}) per student cell; no standard deviation."
    return (f"Seeds: every student cell trained with train.seed {', '.join(map(str, seeds))}; "
            "each figure is the mean, ± the sample standard deviation over the seeds (for "
            "`avg`: of each seed's task average); the size and latency are the first seed's "
            "student's. A difference within one standard deviation is a tie.")


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
    """Fine-tuning seconds of these teachers, summed over the calls that trained each; None when
    a teacher predates that record."""
    from orchestrator.stages.teacher import train_seconds

    total = 0.0
    for path in {r.path for r in (refs or {}).values()}:
        if (s := train_seconds(path)) is None:
            return None
        total += s
    return total


def _data_seconds(row_cfgs: dict[str, ExperimentConfig], single_cfg: ExperimentConfig, data,
                  teachers: "_TeacherSources") -> dict[str, float | None]:
    """Augmentation (row 4's transfer sets) and bulk labeling (every teacher's soft-label cache)
    seconds, summed over tasks and resumptions."""
    from orchestrator.stages.pipeline import data_stage_seconds

    soft = row_cfgs.get("bilstm_soft", single_cfg)
    single = data_stage_seconds(soft, data, teachers.single)
    aug = [v["augment"] for v in single.values()]
    label = sum(v["label"] or 0.0 for v in single.values())
    done = {"single"}
    for c in row_cfgs.values():  # the other teachers' labels, once per kind
        src = teacher_source(c)
        if src not in done:
            done.add(src)
            label += sum(v["label"] or 0.0 for v in data_stage_seconds(
                c, data, teachers.refs(c)).values())
    return {"augment": (float(sum(aug)) if "bilstm_soft" in row_cfgs and None not in aug
                        else None), "labeling": label}


def stage_seconds(selected: list[Row], cells: list[Cell], teachers: "_TeacherSources",
                  measure_s: float, data_s: dict[str, float | None] | None = None
                  ) -> dict[str, float | None]:
    """Compute seconds per stage, summed over every call that contributed: the teachers'
    fine-tuning (and the multi-task teacher's refinement), augmentation and labeling, then each
    student row's training (every run it trained: the whole grid, every seed), and this call's
    latency measurement."""
    out: dict[str, float | None] = dict(teachers.seconds)
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
    # whole seconds, so the report's note and the README block (from the JSON) print the same
    return {k: None if v is None else float(round(v)) for k, v in out.items()}


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
            # 4 decimals: the tables print 1, and a value rounded twice could read 0.1 off
            "row": c.row, "task": c.task, "score": round(100 * c.metrics["score"], 4),
            "metrics": {k: round(100 * v, 4) for k, v in c.metrics.items() if k != "score"},
            "non_embedding_params": int(p["non_embedding"]) if p is not None else None,
            **({"score_std": round(100 * std, 4), "seeds": c.seeds,
                "seed_scores": [round(100 * x, 4) for x in c.seed_scores]}
               if (std := score_std(c)) is not None else {}),
            "latency_ms_b1": round(float(p["latency_b1_ms"]), 4) if p is not None else None,
            "flag": c.flag, "tuning": c.tuning or None})
    return {"commit": _commit(), "date": datetime.date.today().isoformat(), "budget": budget,
            "machine": describe_machine(),
            "stage_seconds": dict(stages),
            "rows": [r.id for r in selected], "cells": out_cells}
