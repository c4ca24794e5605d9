"""Flags, the table (the report's Markdown and the README's), the record in MLflow."""
from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.app.report.context import _Report
from orchestrator.app.report.rows import (BERT_BASE, KIND_CELL, METRIC_SHORT, ROWS, TAG_REPORT,
                                          Cell, Row, score_std)
from orchestrator.app.report.students import _fmt_lr, _metric_names
from orchestrator.config import ExperimentConfig
from orchestrator.runtime import tracking
from orchestrator.runtime.progress import duration


def compare(c: Cell, b: Cell) -> str:
    """``win``, ``tie`` or ``loss`` of cell ``c`` against baseline ``b`` on the mean score: with
    seeds, a difference within one standard deviation (the larger of the two) is a tie; with
    one seed each, any difference counts."""
    diff = c.metrics["score"] - b.metrics["score"]
    spread = max((x for x in (score_std(c), score_std(b)) if x is not None), default=0.0)
    if abs(diff) <= spread or diff == 0:
        return "tie" if spread else "loss"
    return "win" if diff > 0 else "loss"


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
            losses, ties = [], []
            for b in r.baselines:
                bc = by.get((b, t))
                if b not in present or bc is None or "score" not in bc.metrics:
                    continue
                verdict = compare(c, bc)
                name = f"row {nums[b]} {b} ({_fmt_score(bc)})"
                (losses if verdict == "loss" else ties if verdict == "tie" else []).append(name)
            if losses or ties:
                c.flag = "; ".join(x for x in (
                    "does not beat " + " and ".join(losses) if losses else "",
                    "ties with " + " and ".join(ties) + " (within one std)" if ties else "") if x)
                flags.append(f"row {r.num} {r.id} on {t}: score {_fmt_score(c)} {c.flag}")
    return flags


def _fmt_score(c: Cell) -> str:
    std = score_std(c)
    return f"{100 * c.metrics['score']:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def seed_averages(cells: list[Cell]) -> list[float]:
    """A row's task average per seed (every cell trained with the same seeds), else []."""
    if not cells or any(len(c.seed_scores) < 2 or len(c.seed_scores) != len(cells[0].seed_scores)
                        for c in cells):
        return []
    return [float(np.mean(x)) for x in zip(*(c.seed_scores for c in cells))]


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
        avgs = seed_averages([by[(rid, t)] for t in tasks if (rid, t) in by]) \
            if r and len(scores) == len(tasks) else []
        line["avg_std"] = float(np.std(avgs, ddof=1)) if avgs else np.nan
        for t in tasks:
            c = by.get((rid, t))
            std = score_std(c) if c else None
            line[f"{t}_std"] = std if std is not None else np.nan
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
                std = r.get(f"{t}_std")
                if std is not None and std == std:
                    cell += f" (± {100 * std:.1f})"
                flag = r.get(f"{t}_flag")  # None becomes NaN in a column that has flags
                vals.append(cell + (" ⚠" if isinstance(flag, str) and flag else ""))
        avg_std = r.get("avg_std")
        vals.append("—" if r["avg_score"] != r["avg_score"] else f"{100 * r['avg_score']:.1f}"
                    + (f" ± {100 * avg_std:.1f}" if avg_std is not None and avg_std == avg_std
                       else ""))
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
              "rows 1b and 1c vs row 1a); with seeds, (± std) and a difference within one "
              "standard deviation is a tie, flagged too."]
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
          "(x0.1 for the Transformers) on dev: a single-task cell by its task's dev score, a "
          "joint MKD student by the mean over its tasks (the same grid for every student row"
          + (f"; each lr trains {rung} epoch(s), then only the one with the best dev score so far "
             "trains on" if rung else "")
          + "); the others use the fixed lr above" if grid and tuned else
          "every student row uses the fixed lr above")
    late = sorted({(c.task, c.tuning["min_epochs"]) for c in cells
                   if (c.tuning or {}).get("min_epochs")})
    per_task = "".join(f" On {task}, patience starts counting (and a grid's rung is taken) at "
                       f"epoch {n}." for task, n in late)
    joint = any(r.kind == "mkd" for r in selected)
    pick = (" Selection: every student cell keeps its task's best dev epoch; a joint student's "
            "task keeps the report (stage 1 or 2) with that task's best dev score."
            if joint else "")
    return (f"Tuning: students train {epochs}; {lr}.{per_task}{pick} Teachers keep their best "
            "epoch on dev.")


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
        vals, scores, size, lat, per_seed = [num, label], [], None, None, []
        for t in tasks:
            c = by.get((rid, t))
            if c is None:
                vals.append("—")
                continue
            ms = [c["metrics"].get(m) for m in get_task(t).metrics]
            vals.append(" / ".join("—" if v is None else f"{v:.1f}" for v in ms)
                        + (f" (± {c['score_std']:.1f})" if c.get("score_std") is not None
                           else "") + (" ⚠" if c.get("flag") else ""))
            scores.append(c["score"])
            per_seed.append(c.get("seed_scores") or [])
            size = c["non_embedding_params"] if size is None else size
            lat = c["latency_ms_b1"] if lat is None else lat
        avgs = ([float(np.mean(x)) for x in zip(*per_seed)]
                if per_seed and all(len(p) > 1 and len(p) == len(per_seed[0]) for p in per_seed)
                else [])
        vals.append(f"{np.mean(scores):.1f}" + (f" ± {np.std(avgs, ddof=1):.1f}" if avgs else "")
                    if len(scores) == len(tasks) else "—")
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
    names = {"single": "single-task teacher(s)", "multi": "multi-task teacher",
             "refined": "multi-task teacher refined per task"}
    t = ", ".join(f"{names.get(k, k)} {'reused' if v else 'trained'}"
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
