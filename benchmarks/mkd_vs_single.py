"""Single-task KD vs multi-task KD (MKD) of the same student, on the same budget.

    .venv/bin/python benchmarks/mkd_vs_single.py --train 500 --dev 300 --epochs 2
    .venv/bin/python benchmarks/mkd_vs_single.py --archs bcn --tasks sst2,mrpc --same-teacher

For every student architecture (BCN, Transformer), trains
- *single*: one student per task, distilled from that task's teacher (single-task fine-tuned
  teachers; with ``--same-teacher`` the multi-task teacher's head for the task), ``--epochs``
  epochs over the task's transfer set;
- *mkd*: one student with shared layers and a head per task, distilled jointly from the
  multi-task teacher, ``--epochs`` epochs where an epoch has as many steps as all tasks' single
  epochs together (tasks drawn by the proportional mixture), so both see the same number of
  batches; ``--finetune-epochs`` adds MKD's per-task stage 2 on top (extra budget, reported).

Uses the pipeline's own stages (load_data, ensure_teachers, prepare_bundle, the Ray Train loop)
on the ``mkd`` preset's settings (local GLUE tasks, MiniLM teacher; ``--set`` overrides), and
logs every run to MLflow with the tags ``distillray.kind=benchmark``,
``distillray.benchmark=mkd_vs_single``, ``distillray.mode``, ``distillray.arch`` and
``distillray.task``. Prints each task's dev metrics side by side, taken at each run's best epoch
(by ``dev_score``, the rule the search uses), and the GLUE-style average.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from orchestrator.app.run import resolve_run  # noqa: E402
from orchestrator.config import with_values  # noqa: E402
from orchestrator.runtime import tracking  # noqa: E402
from orchestrator.runtime.ray_runtime import init_ray  # noqa: E402
from orchestrator.search.search import ensure_teachers  # noqa: E402
from orchestrator.stages.pipeline import load_data, prepare_bundle  # noqa: E402
from orchestrator.stages.preflight import preflight  # noqa: E402
from orchestrator.training.distill import distill_one  # noqa: E402

BENCH = "mkd_vs_single"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="mkd", help="preset whose config is the base (default mkd)")
    ap.add_argument("--tasks", default=None, help="comma-separated tasks (default: the preset's)")
    ap.add_argument("--archs", default="bcn,transformer")
    ap.add_argument("--train", type=int, default=500, help="training examples per task")
    ap.add_argument("--dev", type=int, default=300, help="dev examples per task")
    ap.add_argument("--epochs", type=int, default=2, help="student epochs (both modes)")
    ap.add_argument("--finetune-epochs", type=int, default=0, help="MKD stage 2 epochs")
    ap.add_argument("--teacher-epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-3, help="student learning rate")
    ap.add_argument("--init", default="even", help="Transformer init_from_teacher")
    ap.add_argument("--same-teacher", action="store_true",
                    help="single-task students learn from the multi-task teacher's heads too "
                         "(isolates the student side; skips single-task teacher fine-tuning)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--work-root", default=".distillray")
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--experiment", default="distillray-benchmarks")
    return ap.parse_args(argv)


def best_epoch(result) -> dict:
    """The reported metrics of the epoch with the highest dev_score."""
    hist = result.metrics_dataframe
    if hist is None or not len(hist):
        return dict(result.metrics or {})
    return hist.loc[hist["dev_score"].idxmax()].to_dict()


def train_student(cfg, bundle, client, exp_id: str, uri: str, storage: str, name: str,
                  tags: dict[str, str]) -> tuple[dict, float]:
    run_id = tracking.start_run(client, exp_id, name, {tracking.TAG_KIND: "benchmark",
                                                       "distillray.benchmark": BENCH, **tags})
    tracking.log_params(client, run_id, cfg.to_dict())
    t0 = time.time()
    try:
        student = distill_one(cfg, bundle.path, run_id=run_id, tracking_uri=uri, storage=storage,
                              name=name)
    except BaseException as e:
        tracking.end_run(client, run_id, False, f"{type(e).__name__}: {e}")
        raise
    best = best_epoch(student.result)
    seconds = time.time() - t0
    tracking.log_metrics(client, run_id, {f"best_{k}": float(v) for k, v in best.items()
                                          if isinstance(v, (int, float)) and k != "epoch"}
                         | {"run_seconds": seconds, "best_epoch": float(best.get("epoch", 0))})
    tracking.end_run(client, run_id, True)
    return best, seconds


def main(argv=None) -> int:
    args = parse_args(argv)
    sets = [f"data.max_train_examples={args.train}", f"data.max_dev_examples={args.dev}",
            f"train.epochs={args.epochs}", f"teacher.epochs={args.teacher_epochs}",
            f"train.lr={args.lr}", f"student.init_from_teacher={args.init}",
            "train.mixture=proportional", "train.finetune_epochs=0", *args.set]
    if args.tasks:
        sets.append(f"tasks=[{args.tasks}]")
    extra = {"work_root": str(Path(args.work_root).resolve())}
    if args.tracking_uri:
        extra["tracking.uri"] = args.tracking_uri
    _, cfg, _ = resolve_run(args.preset, sets, extra=extra)
    cfg = with_values(cfg, {"teacher.multitask": True})
    tasks = cfg.tasks or [cfg.data.task]
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    uri = tracking.resolve_uri(cfg.tracking.uri)
    work_root = Path(cfg.work_root)
    storage = str(work_root / "bench-runs")
    Path(storage).mkdir(parents=True, exist_ok=True)

    init_ray(log=print)
    from mlflow.tracking import MlflowClient
    client = MlflowClient(uri)
    exp_id = tracking.experiment_id_for(client, cfg, args.experiment)
    data = load_data(cfg)
    for arch in archs:
        preflight(with_values(cfg, {"student.arch": arch}), None, data)

    t0 = time.time()
    mkd_refs = ensure_teachers(cfg, data, client, exp_id, print)
    if args.same_teacher:
        single_refs = mkd_refs
    else:
        single_cfg = with_values(cfg, {"teacher.multitask": False})
        single_refs = ensure_teachers(single_cfg, data, client, exp_id, print)
    teacher_seconds = time.time() - t0
    teacher_scores = {"mkd": _teacher_scores(mkd_refs), "single": _teacher_scores(single_refs)}

    rows: dict[tuple[str, str], dict] = {}  # (arch, mode) -> per-task metrics
    seconds: dict[tuple[str, str], float] = {}
    for arch in archs:
        c = with_values(cfg, {"student.arch": arch})
        preflight(c, None, data, mkd_refs)
        bundle = prepare_bundle(c, data, mkd_refs, print)
        best, s = train_student(c, bundle, client, exp_id, uri, storage, f"{BENCH}-{arch}-mkd",
                                {"distillray.mode": "mkd", "distillray.arch": arch,
                                 "distillray.task": ",".join(tasks)})
        rows[(arch, "mkd")], seconds[(arch, "mkd")] = best, s
        if args.finetune_epochs:
            c2 = with_values(c, {"train.finetune_epochs": args.finetune_epochs})
            best, s = train_student(c2, bundle, client, exp_id, uri, storage,
                                    f"{BENCH}-{arch}-mkd+ft",
                                    {"distillray.mode": "mkd+finetune", "distillray.arch": arch,
                                     "distillray.task": ",".join(tasks)})
            rows[(arch, "mkd+ft")], seconds[(arch, "mkd+ft")] = best, s
        merged, total = {}, 0.0
        for t in tasks:
            cs = with_values(c, {"tasks": [t]})
            preflight(cs, None, {t: data[t]}, {t: single_refs[t]})
            b = prepare_bundle(cs, {t: data[t]}, {t: single_refs[t]}, print)
            best, s = train_student(cs, b, client, exp_id, uri, storage,
                                    f"{BENCH}-{arch}-single-{t}",
                                    {"distillray.mode": "single", "distillray.arch": arch,
                                     "distillray.task": t})
            merged.update({k: v for k, v in best.items() if k.startswith(f"{t}_")})
            total += s
        rows[(arch, "single")], seconds[(arch, "single")] = merged, total

    print_table(tasks, rows, seconds, teacher_scores, teacher_seconds, args)
    return 0


def _teacher_scores(refs) -> dict[str, float]:
    import json

    out = {}
    for t, r in refs.items():
        m = json.loads((Path(r.path) / "metrics.json").read_text())
        out[t] = m.get(f"{t}_score", m.get("score"))
    return out


def print_table(tasks, rows, seconds, teacher_scores, teacher_seconds, args) -> None:
    cols = list(rows)
    head = f"{'task':<6} {'metric':<10} {'T-single':>9} {'T-mkd':>7}" + "".join(
        f" {a[:5] + '-' + m:>14}" for a, m in cols)
    print(f"\n== single-task KD vs MKD: {len(tasks)} tasks, {args.train} train / {args.dev} dev "
          f"examples per task, {args.epochs} student epochs, teacher epochs {args.teacher_epochs}"
          f"{', same teacher' if args.same_teacher else ''} ==")
    print(head)
    from tasks.registry import get_task
    for t in tasks:
        spec = get_task(t)
        for k in list(spec.metrics) + ["score"]:
            vals = "".join(f" {rows[c].get(f'{t}_{k}', float('nan')):>14.4f}" for c in cols)
            ts = (f"{teacher_scores['single'][t]:>9.4f} {teacher_scores['mkd'][t]:>7.4f}"
                  if k == "score" else f"{'':>9} {'':>7}")
            print(f"{t:<6} {k:<10} {ts}{vals}")
    avg = lambda r: sum(r.get(f"{t}_score", float("nan")) for t in tasks) / len(tasks)  # noqa: E731
    t_avg = {m: sum(teacher_scores[m][t] for t in tasks) / len(tasks) for m in teacher_scores}
    print(f"{'avg':<6} {'score':<10} {t_avg['single']:>9.4f} {t_avg['mkd']:>7.4f}"
          + "".join(f" {avg(rows[c]):>14.4f}" for c in cols))
    print(f"{'time':<6} {'seconds':<10} {'teachers':>9} {teacher_seconds:>7.0f}"
          + "".join(f" {seconds[c]:>14.0f}" for c in cols))


if __name__ == "__main__":
    sys.exit(main())
