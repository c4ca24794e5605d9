"""``distillray`` command line: each pipeline stage on its own, the search, and the record.

    distillray tune --preset tang [--set train.lr=3e-4 ...]
    distillray finetune-teacher --task sst2          distillray augment --task sst2
    distillray label --task sst2                     distillray best --search NAME
    distillray ui                                    distillray export --search NAME
    distillray report --budget small --tasks sst2,mrpc --out report.md
    distillray gc [--yes]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from orchestrator.app.run import resolve_run
from orchestrator.config import ConfigError
from orchestrator.runtime import progress
from orchestrator.runtime.redact import has_secret, redact
from orchestrator.stages.preflight import check_inputs


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="smoke", help="search_spaces preset name or YAML path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=3e-4 (repeatable)")
    p.add_argument("--assets", default=None,
                   help="local assets dir (GLUE TSVs, teacher, GloVe, nltk_data); default "
                        "$DISTILLRAY_ASSETS or ../shared/assets when present")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default "
                   "$MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--work-root", default=None, help="cache/artifact root: teachers, soft labels, "
                   "bundles (default $DISTILLRAY_WORK_ROOT or .distillray; shared storage on "
                   "clusters)")


def _warn_secret_flag(uri: str | None) -> None:
    """A password in --tracking-uri is on the command line: readable by every user in `ps`."""
    if has_secret(uri):
        print(f"distillray: warning: --tracking-uri {redact(uri)} holds a password, which every "
              "user of this machine can read in `ps` and your shell history keeps; give the URI "
              "in $MLFLOW_TRACKING_URI instead (for PostgreSQL, the password in ~/.pgpass)",
              file=sys.stderr)


def _extra(args) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if getattr(args, "tracking_uri", None):
        extra["tracking.uri"] = args.tracking_uri
    work_root = getattr(args, "work_root", None) or os.environ.get("DISTILLRAY_WORK_ROOT")
    if work_root:
        extra["work_root"] = work_root
    if getattr(args, "name", None):
        extra["search.name"] = args.name
    if getattr(args, "num_samples", None):
        extra["search.num_samples"] = args.num_samples
    if getattr(args, "storage_path", None):
        extra["search.storage_path"] = args.storage_path
    if getattr(args, "task", None):
        extra["data.task"] = args.task
    return extra


def cmd_tune(args) -> int:
    from orchestrator.search.search import run_search

    sets = list(args.set)
    if args.cpu_teachers:  # the fallback when the cluster has no GPU / teacher_gpu nodes
        sets += ["pool.gpus_per_actor=0", "pool.resources_per_actor={}"]
    space, cfg, overrides = resolve_run(args.preset, sets, args.assets, _extra(args))
    out = run_search(cfg, space, overrides, address=args.address, resume=not args.no_resume)
    print(f"[done] search {out.name} in {out.seconds:.0f}s; MLflow parent run {out.parent_run_id}")
    return 0 if out.best else 1


def cmd_finetune_teacher(args) -> int:
    from orchestrator.stages.pipeline import load_data
    from orchestrator.stages.teacher import finetune_teacher
    from tasks.loaders import data_fingerprint

    _, cfg, _ = resolve_run(args.preset, args.set, args.assets, _extra(args))
    check_inputs(cfg)
    for name, d in load_data(cfg).items():
        res = finetune_teacher(cfg.teacher, d.task, d.train, next(iter(d.dev.values())),
                               cfg.work_root, data_fingerprint(d.train))
        print(f"{name}: {res.path} ({'reused' if res.reused else f'{res.seconds:.0f}s'}) {res.metrics}")
    return 0


def cmd_augment(args) -> int:
    from orchestrator.stages.augment_stage import augment_dataset
    from orchestrator.stages.pipeline import load_data
    from tasks.loaders import data_fingerprint

    _, cfg, _ = resolve_run(args.preset, args.set + ["augment.enabled=true"], args.assets, _extra(args))
    check_inputs(cfg)
    for name, d in load_data(cfg).items():
        res = augment_dataset(d.train, cfg.augment, Path(cfg.work_root) / "transfer",
                              data_key=f"{name}:{data_fingerprint(d.train)}",
                              pair_mode=cfg.augment.pair_mode, log=print, task=name)
        print(f"{name}: {res.n_in} examples in -> {res.n_out} out, {res.seconds:.1f}s "
              f"({'reused' if res.reused else 'built'}) -> {res.path}")
        for k, v in res.stats.items():
            print(f"  {k}: {v}")
    return 0


def cmd_label(args) -> int:
    from orchestrator.stages.pipeline import TeacherRef, label_examples, load_data
    from orchestrator.teachers.teacher_model import teacher_identity

    _, cfg, _ = resolve_run(args.preset, args.set, args.assets, _extra(args))
    if not args.teacher:
        raise ConfigError("label needs --teacher DIR (a fine-tuned teacher)")
    check_inputs(cfg, teacher=False)
    from orchestrator.teachers.teacher_model import check_teacher_path
    check_teacher_path(args.teacher)
    from orchestrator.runtime.ray_runtime import init_ray
    init_ray()
    for name, d in load_data(cfg).items():
        ref = TeacherRef(args.teacher, teacher_identity(args.teacher), name, cfg.teacher.max_length)
        res = label_examples(d.train, ref, cfg, Path(cfg.work_root))
        print(f"{name}: {len(d.train)} labeled; cache hits {res.hits}, misses {res.misses}")
    return 0


def cmd_best(args) -> int:
    from orchestrator.record.registry import best_of_search

    info = best_of_search(args.search, args.tracking_uri, args.experiment)
    for k, v in info.items():
        print(f"{k}: {redact(v)}")
    return 0


def cmd_export(args) -> int:
    """A student dir, or a search's best student from MLflow -> TorchScript + ONNX + predict.py."""
    import tempfile

    from orchestrator.deploy.export import export_student

    formats = [f for f in args.formats.split(",") if f.strip()]
    with tempfile.TemporaryDirectory(prefix="distillray-export-") as tmp:
        student = args.student_dir
        if student is None:
            from mlflow.tracking import MlflowClient

            from orchestrator.record.registry import best_child_run, download_student
            from orchestrator.runtime.tracking import resolve_uri

            client = MlflowClient(resolve_uri(args.tracking_uri))
            try:
                _, run = best_child_run(client, args.search, args.experiment)
                student = download_student(client, run.info.run_id, tmp)
            except LookupError as e:  # registry.NotFoundError
                print(f"distillray: error: {e}", file=sys.stderr)
                return 2
            print(f"[export] search {args.search}: best run {run.info.run_id}")
        res = export_student(student, args.out, formats)
    for name, path in res.files.items():
        print(f"[export] {name}: {path}")
    print(f"[export] tasks {', '.join(res.tasks)}; inputs {', '.join(res.inputs)}; max |diff| vs "
          "the student " + ", ".join(f"{k} {v:.1e}" for k, v in res.max_abs_diff.items()))
    return 0


def cmd_report(args) -> int:
    """The results table: every row on every task, one MLflow run per cell
    (orchestrator.app.report)."""
    from orchestrator.app.report import parse_row_sets, resolve_report, run_report

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    rows = [r.strip() for r in args.rows.split(",") if r.strip()] if args.rows else None
    cfg = resolve_report(args.preset, args.budget, tasks, args.set, args.assets,
                         {k: v for k, v in _extra(args).items() if k != "search.name"})
    res = run_report(cfg, name=args.name, budget=args.budget, rows=rows,
                     row_sets=parse_row_sets(args.row_set), out=args.out, address=args.address,
                     repeats=(args.repeats, args.repeats_64), threads=args.threads,
                     json_out=args.json, seeds=_seeds(args.seeds))
    print(f"[done] report {res.name} in {res.seconds:.0f}s: {res.trained} cell(s) trained, "
          f"{res.reused} reused, {res.failed} failed; {len(res.flags)} flag(s); MLflow parent "
          f"run {res.parent_run_id}")
    return 0 if res.failed == 0 else 1


def _seeds(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: give comma-separated integers, e.g. 0,1,2") from None


def cmd_ui(args) -> int:
    from orchestrator.runtime.tracking import resolve_uri

    uri = resolve_uri(args.tracking_uri)
    # the store reaches the server through its environment, not its argv: argv is readable by
    # every user of the machine (`ps`), and a database URI may hold a password
    os.environ["MLFLOW_BACKEND_STORE_URI"] = uri
    cmd = [sys.executable, "-m", "mlflow", "ui",
           "--host", args.host, "--port", str(args.port), "--workers", str(args.workers)]
    from mlflow.tracking import MlflowClient

    from orchestrator.runtime.tracking import runs_page

    base = f"http://{args.host}:{args.port}"
    print(f"[ui] MLflow UI on {base} for {redact(uri)}")
    try:  # the runs of the project's experiment, in the UI's "Model training" view
        exp = MlflowClient(uri).get_experiment_by_name(args.experiment)
    except Exception:  # noqa: BLE001 - a store not created yet: the UI still starts
        exp = None
    if exp is not None:
        print(f"[ui] runs of experiment {args.experiment}: {runs_page(base, exp.experiment_id)}")
    # MLflow 3 also starts a job runner for its GenAI jobs, which this project never uses and
    # which slows the UI's start-up on a small machine
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execv(sys.executable, cmd)
    return 0


def cmd_gc(args) -> int:
    """List (and with --yes remove) what the work root holds that nothing references."""
    from orchestrator.app.gc import run_gc
    from orchestrator.config import ExperimentConfig
    from orchestrator.runtime.tracking import resolve_uri

    work_root = (args.work_root or os.environ.get("DISTILLRAY_WORK_ROOT")
                 or ExperimentConfig().work_root)
    run_gc(work_root, resolve_uri(args.tracking_uri), remove=args.yes,
           older_than_h=args.older_than, ray_tmp=args.ray_tmp)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="distillray", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("tune", help="run a distillation search (Tune + Optuna + ASHA)")
    _common(p)
    p.add_argument("--name", help="search name (re-running a name resumes it)")
    p.add_argument("--num-samples", type=int)
    p.add_argument("--storage-path", help="Tune results dir or URI (shared storage on clusters; "
                   "default $DISTILLRAY_STORAGE_PATH or <work root>/tune)")
    p.add_argument("--cpu-teachers", action="store_true",
                   help="run teacher actors on CPU: drop pool.gpus_per_actor and "
                        "pool.resources_per_actor (for clusters without GPU nodes)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or local)")
    p.add_argument("--no-resume", action="store_true", help="start over even if the name exists")
    p.set_defaults(fn=cmd_tune)
    for name, fn, hlp in (("finetune-teacher", cmd_finetune_teacher, "fine-tune (or reuse) the teacher"),
                          ("augment", cmd_augment, "build the Tang-augmented transfer set"),
                          ("label", cmd_label, "label a task's training set with a teacher")):
        p = sub.add_parser(name, help=hlp)
        _common(p)
        p.add_argument("--task", help="task name (overrides data.task)")
        if name == "label":
            p.add_argument("--teacher", help="fine-tuned teacher dir")
        p.set_defaults(fn=fn)
    p = sub.add_parser("best", help="print the best student of a search")
    p.add_argument("--search", required=True)
    p.add_argument("--tracking-uri")
    p.add_argument("--experiment", default="distillray")
    p.set_defaults(fn=cmd_best)
    p = sub.add_parser("export", help="export a student to TorchScript + ONNX + predict.py")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--student-dir", help="a saved student (model.safetensors, student.json, ...)")
    src.add_argument("--search", help="export the best student of this search (from MLflow)")
    p.add_argument("--tracking-uri")
    p.add_argument("--experiment", default="distillray")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--formats", default="torchscript,onnx", help="comma-separated: torchscript,onnx")
    p.set_defaults(fn=cmd_export)
    p = sub.add_parser("report", help="the results table: teachers, BiLSTM and MKD students on "
                       "each task, size and latency vs the teacher and BERT-base")
    _common(p)
    p.set_defaults(preset="report", fn=cmd_report)
    p.add_argument("--tasks", help="comma-separated tasks (default: the preset's: sst2,mrpc,rte,"
                   "cola,stsb)")
    p.add_argument("--budget", choices=["small", "full"], default="small",
                   help="small: capped subsets and epochs (2-CPU machine, < 90 min); full: all data")
    p.add_argument("--name", help="report name (default report-<budget>); re-running a name "
                   "reuses its finished cells")
    p.add_argument("--rows", help="comma-separated subset of rows (default all): teacher,"
                   "teacher_mkd,teacher_mkd_refined,bilstm_gold,bilstm_kd,bilstm_soft,mkd_bcn,"
                   "mkd_transformer,mkd_bcn_st,mkd_transformer_st,bcn_kd,transformer_kd")
    p.add_argument("--seeds", help="comma-separated train.seed values: every student cell "
                   "trains once per seed and reports mean and standard deviation (default: the "
                   "config's one seed)")
    p.add_argument("--row-set", action="append", default=[], metavar="ROW:KEY=VALUE",
                   help="override a value for one row, e.g. mkd_transformer:train.lr=5e-5")
    p.add_argument("--out", default="report.md", help="markdown file for the table")
    p.add_argument("--json", help="also write the table as JSON here (e.g. "
                   "docs/results/full.json: one object per row and task)")
    p.add_argument("--repeats", type=int, default=30, help="timed batch-1 forward passes")
    p.add_argument("--repeats-64", type=int, default=5, help="timed batch-64 forward passes")
    p.add_argument("--threads", type=int, default=1, help="torch threads while timing")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or local)")
    p = sub.add_parser("ui", help="MLflow UI on the project's store (127.0.0.1)")
    p.add_argument("--tracking-uri")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--experiment", default="distillray")
    # MLflow's default is 4 server processes, each importing MLflow; on a loaded 2-core machine
    # one process reached /health in 9-19 s against 20-21 s for four, and serves one browser
    p.add_argument("--workers", type=int, default=1, help="MLflow server processes")
    p.set_defaults(fn=cmd_ui)
    p = sub.add_parser("gc", help="list (dry run) or remove work-root entries no run references, "
                       "partial checkpoints, temporary leftovers and old Ray sessions")
    p.add_argument("--work-root", default=None, help="default $DISTILLRAY_WORK_ROOT or .distillray")
    p.add_argument("--tracking-uri", help="the store whose runs say what is in use (default "
                   "$MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--older-than", type=float, default=24.0, metavar="HOURS",
                   help="keep anything touched more recently (a running search's work)")
    p.add_argument("--ray-tmp", help="Ray's temporary folder (default $RAY_TMPDIR/ray or /tmp/ray)")
    p.add_argument("--yes", action="store_true", help="remove what is listed (default: list only)")
    p.set_defaults(fn=cmd_gc)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _warn_secret_flag(getattr(args, "tracking_uri", None))
    progress.quiet_library_bars()  # in a log file, progress lines only
    try:
        return args.fn(args)
    except (ConfigError, OSError, ValueError, LookupError, RuntimeError) as e:
        if os.environ.get("DISTILLRAY_DEBUG"):
            raise
        print(f"distillray: error: {redact(str(e))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
