"""Students (rows 2-6): train runs, the learning-rate grid and its rung, the cells."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.app.report.context import _Report
from orchestrator.app.report.rows import KIND_CELL, KIND_TRAIN, Cell, Row, cell_key
from orchestrator.config import ExperimentConfig, with_overrides, with_values
from orchestrator.runtime import tracking
from orchestrator.runtime.keys import content_key
from orchestrator.training.checkpoint import latest_and_best


def _task_metrics(best: dict[str, float], task: str) -> dict[str, float]:
    from tasks.registry import get_task

    spec = get_task(task)
    return {k: best[f"{task}_{k}"] for k in (*spec.metrics, "score") if f"{task}_{k}" in best}


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
        latest, _ = latest_and_best(root)
        reached = latest is not None and (latest.done or (
            pause_after is not None and latest.report + 1 >= pause_after))
        if latest is not None and not reached:
            ctx.note(f"{row.num} {row.id}/{task_tag}: resuming after report "
                     f"{latest.report + 1} (MLflow run {rid})")
        if not reached:
            with on_demand_labeler(cfg, refs) as labeler:  # None unless soft_labels=on_demand
                distill_one(cfg, bundle.path, run_id=rid, tracking_uri=ctx.uri,
                            storage=ctx.storage, name=name, labeler=labeler,
                            pause_after=pause_after)
        latest, best = latest_and_best(root)
        if best is None:
            raise RuntimeError(f"the student's Train run left no checkpoint under {root}")
        seconds = _history_sum(ctx.client, rid, "epoch_seconds")
        if pause_after is not None and not latest.done:
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


def _run_grid(ctx: _Report, row: Row, points: list[ExperimentConfig], keys: list[str],
              task_tag: str, data, refs, rung: int | None, score) -> tuple[list[_Trained], int,
                                                                            list[float], list | None]:
    """Train one student per point (a learning rate each) and pick the best by ``score`` (ties:
    the first). ``rung``: each point first trains that many reports, and only the best of them
    at that point trains on. Returns (trained, pick, final scores, rung scores or None)."""
    trained = [_train_point(ctx, row, pc, data, refs, task_tag, pkey, rung)
               for pc, pkey in zip(points, keys)]
    scores = [score(t) for t in trained]
    pick = int(np.argmax(scores))
    if not rung:
        return trained, pick, scores, None
    ctx.note(f"{row.num} {row.id}/{task_tag}: after {rung} report(s) lr "
             f"{_fmt_lr(points[pick].train.lr)} leads ({', '.join(f'{x:.4f}' for x in scores)}); "
             "training it on")
    trained[pick] = _train_point(ctx, row, points[pick], data, refs, task_tag, keys[pick])
    return trained, pick, [score(t) if i == pick else x for i, (t, x) in
                           enumerate(zip(trained, scores))], scores


def _grid_of(row: Row, c: ExperimentConfig, grid: tuple[float, ...], rung: int | None):
    """The row's learning rates (the budget's grid scaled by the row's ``lr_scale`` when tuned,
    else the config's) and the rung (none for a single point; never before ``min_epochs``)."""
    lrs = tuple(lr * row.lr_scale for lr in grid) if row.tuned and grid else (c.train.lr,)
    rung = rung if len(lrs) > 1 else None
    if rung and c.train.min_epochs:
        rung = max(rung, c.train.min_epochs * c.train.evals_per_epoch)
    return lrs, rung


def _grid_record(lrs: tuple[float, ...], pick: int, scores: list[float], rung: int | None,
                 rung_scores: list | None) -> dict:
    """How a cell picked its learning rate, as its tuning record keeps it."""
    return {"lr": lrs[pick], "lr_grid": list(lrs) if len(lrs) > 1 else None,
            "grid_scores": [float(x) for x in scores] if len(lrs) > 1 and not rung else None,
            "rung": rung, "rung_scores": [float(x) for x in rung_scores] if rung else None}


def _grid_key(keys: list[str], rung: int | None) -> str:
    return keys[0] if len(keys) == 1 else content_key({"grid": keys, **({"rung": rung} if rung
                                                                       else {})})


def _single_cell(ctx: _Report, row: Row, cfg: ExperimentConfig, task: str, data, refs,
                 grid: tuple[float, ...], rung: int | None = None) -> Cell:
    """Rows 2-4 and 6: one student per task; a tuned row trains one per learning rate of the
    ``grid`` (times the row's ``lr_scale``) and keeps the best on this task's dev score
    (:func:`_run_grid`)."""
    c = with_values(cfg, {"tasks": [task], "data.task": task})
    sub, sub_refs = {task: data[task]}, {task: refs[task]}
    lrs, rung = _grid_of(row, c, grid, rung)
    points = [with_overrides(c, {"train.lr": lr}) for lr in lrs]
    keys = [cell_key(row, pc, sub, sub_refs) for pc in points]
    key = _grid_key(keys, rung)
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
    ctx.note(f"{row.num} {row.id}/{task}: "
             + (f"lr {', '.join(map(_fmt_lr, lrs))}, " if len(lrs) > 1 else "")
             + (f"first {rung} report(s) each, " if rung else "")
             + f"config key{'s' if len(keys) > 1 else ''} {', '.join(keys)}")
    try:
        trained, pick, scores, rung_scores = _run_grid(
            ctx, row, points, keys, task, sub, sub_refs, rung,
            lambda t: t.best.get(f"{task}_score", t.best.get("dev_score", -np.inf)))
    except Exception as e:  # noqa: BLE001 - one failed cell does not hide the others
        return _failed(ctx, row, task, key, e)
    chosen = trained[pick]
    m = _task_metrics(chosen.best, task)
    tuning = {**_grid_record(lrs, pick, scores, rung, rung_scores),
              "best_epoch": chosen.best.get("epoch"), "epochs_run": chosen.best.get("epochs_run"),
              "patience": c.train.patience, "max_epochs": c.train.epochs,
              **({"min_epochs": c.train.min_epochs} if c.train.min_epochs else {})}
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


def per_task_best(client, run_id: str, tasks: list[str]) -> dict[str, dict[str, float]]:
    """Each task's dev metrics at that task's best report of a (joint) train run, as its MLflow
    history holds them (stage 1 and stage 2 reports alike; ties: the earlier report): the
    selection rule of the single-task cells, each of which keeps its own best dev epoch."""
    from tasks.registry import get_task

    def history(key: str) -> dict[int, float]:
        return {m.step: m.value for m in sorted(client.get_metric_history(run_id, key),
                                                key=lambda m: m.timestamp)}

    epochs = history("epoch")
    out = {}
    for task in tasks:
        scores = history(f"{task}_score")
        if not scores:
            raise LookupError(f"train run {run_id} logged no {task}_score")
        step = max(scores, key=lambda k: (scores[k], -k))
        m = {k: history(f"{task}_{k}").get(step, np.nan) for k in get_task(task).metrics}
        out[task] = {**m, "score": scores[step], "epoch": epochs.get(step, np.nan),
                     "report": float(step)}
    return out


def _mkd_cells(ctx: _Report, row: Row, cfg: ExperimentConfig, tasks: list[str], data, refs,
               grid: tuple[float, ...] = (), rung: int | None = None) -> list[Cell]:
    """Rows 5: one student for every task at once. A tuned row trains one per learning rate of
    the ``grid`` and keeps the one with the best mean dev score over the tasks (one model, one
    learning rate); then, like every single-task cell, each task keeps its own best dev report
    (:func:`per_task_best`: MKD's stage 2 gives each task its own copy anyway)."""
    joint = ",".join(tasks)
    lrs, rung = _grid_of(row, cfg, grid, rung)
    points = [with_overrides(cfg, {"train.lr": lr}) for lr in lrs]
    keys = [cell_key(row, pc, data, refs) for pc in points]
    key = _grid_key(keys, rung)
    ctx.note(f"{row.num} {row.id}: jointly on {joint}"
             + (f", lr {', '.join(map(_fmt_lr, lrs))}" if len(lrs) > 1 else "")
             + (f", first {rung} report(s) each" if rung else "")
             + f" (config key{'s' if len(keys) > 1 else ''} {', '.join(keys)})")
    try:
        trained, pick, scores, rung_scores = _run_grid(
            ctx, row, points, keys, joint, data, refs, rung,
            lambda t: t.best.get("dev_score", -np.inf))
        t = trained[pick]
        best = per_task_best(ctx.client, t.run_id, tasks)
    except Exception as e:  # noqa: BLE001
        return [_failed(ctx, row, task, key, e, log=task == tasks[0]) for task in tasks]
    if all(x.status == "reused" for x in trained):
        ctx.note(f"{row.num} {row.id}: reused joint MLflow run {t.run_id} (FINISHED)")
    seconds = {x.run_id: x.seconds for x in trained}
    status = "trained" if any(x.status in ("trained", "paused") for x in trained) else "reused"
    cells = []
    for task in tasks:
        m = {k: v for k, v in best[task].items() if k not in ("epoch", "report")}
        tuning = {**_grid_record(lrs, pick, scores, rung, rung_scores),
                  "selection": "per-task best dev report",
                  "best_epoch": best[task]["epoch"], "epochs_run": t.best.get("epochs_run"),
                  "patience": cfg.train.patience, "max_epochs": cfg.train.epochs,
                  "finetune_epochs": cfg.train.finetune_epochs}
        cell = ctx.finished(KIND_CELL, row.id, task, key)
        if cell is None or cell.data.tags.get("distillray.train_run") != t.run_id:
            rid = ctx.start(KIND_CELL, row, task, key, {"distillray.train_run": t.run_id,
                                                        "distillray.tuning": json.dumps(tuning)})
            tracking.log_params(ctx.client, rid, {"train_run": t.run_id, **cfg.to_dict()})
            tracking.log_metrics(ctx.client, rid, {f"report_{k}": v for k, v in m.items()})
            tracking.end_run(ctx.client, rid, True)
        else:
            rid = cell.info.run_id
        ctx.note(f"{row.num} {row.id}/{task}: {status}, score {m.get('score', float('nan')):.4f} "
                 f"(epoch {best[task]['epoch']:g})")
        cells.append(Cell(row.id, task, m, rid, status, key, t.run_id, t.sizes.get(task),
                          tuning=tuning, train_seconds=seconds))
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
