"""Teachers (rows 1a, 1b) and the students' teachers: their cells."""
from __future__ import annotations

import json
from pathlib import Path

from orchestrator.app.report.context import _Report
from orchestrator.app.report.rows import KIND_CELL, REPORT_VERSION, Cell, Row
from orchestrator.config import ExperimentConfig
from orchestrator.runtime import tracking
from orchestrator.runtime.keys import content_key


def _teachers(ctx: _Report, cfg: ExperimentConfig, data, multitask: bool):
    """(refs per task, whether every teacher was already cached)."""
    from orchestrator.search.search import ensure_multitask_teacher, ensure_teachers
    from orchestrator.stages.multitask_teacher import multitask_teacher_key
    from orchestrator.stages.teacher import refined_teacher_key, teacher_key
    from tasks.loaders import data_fingerprint

    root = Path(cfg.work_root) / "teachers"
    if multitask:
        keys = [multitask_teacher_key(cfg.teacher, data)]
        if cfg.teacher.refine_epochs > 0:
            keys += [refined_teacher_key(keys[0], cfg.teacher, d.task, data_fingerprint(d.train))
                     for d in data.values()]
    else:
        keys = [teacher_key(cfg.teacher, d.task, data_fingerprint(d.train)) for d in data.values()]
    cached = all((root / k / "metrics.json").is_file() for k in keys)
    if multitask:  # also for a single task: the multi-task stage with one head
        refs = ensure_multitask_teacher(cfg, data, ctx.client, ctx.exp_id, ctx.log)
    else:
        refs = ensure_teachers(cfg, data, ctx.client, ctx.exp_id, ctx.log)
    return refs, cached


def _teacher_metrics(ref, task: str) -> dict[str, float]:
    """The task's dev metrics as the teacher saved them: a multi-task teacher's under
    ``<task>_``, a single-task (or refined) teacher's as they are."""
    m = json.loads((Path(ref.path) / "metrics.json").read_text())
    if _is_multitask(ref):
        prefix = f"{task}_"
        return {k[len(prefix):]: float(v) for k, v in m.items() if k.startswith(prefix)}
    return {k: float(v) for k, v in m.items()}


def _is_multitask(ref) -> bool:
    from orchestrator.teachers.teacher_model import HEADS_FILE

    f = Path(ref.path) / HEADS_FILE
    return f.is_file() and bool(json.loads(f.read_text()).get("multitask"))


def _teacher_cells(ctx: _Report, row: Row, refs, data, cached: bool) -> list[Cell]:
    from orchestrator.stages.teacher import refine_settings

    cells = []
    for t in data:
        ref = refs[t]
        multitask = _is_multitask(ref)
        key = content_key({"v": REPORT_VERSION, "row": row.id, "teacher": ref.key, "task": t})
        metrics = _teacher_metrics(ref, t)
        run = ctx.finished(KIND_CELL, row.id, t, key)
        if run is not None:
            rid = run.info.run_id
        else:
            rid = ctx.start(KIND_CELL, row, t, key, {"distillray.teacher_key": ref.key})
            refined = (Path(ref.path) / "teacher_config.json").is_file() and "refined_from" in \
                json.loads((Path(ref.path) / "teacher_config.json").read_text())
            settings = (ctx.cfg.teacher if multitask else refine_settings(ctx.cfg.teacher, t)
                        if refined else ctx.cfg.teacher.for_task(t))
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
