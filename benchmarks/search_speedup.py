"""An N-trial search against N x one full trial, measured in the same run.

    .venv/bin/python benchmarks/search_speedup.py                       # tang preset, 8 trials
    .venv/bin/python benchmarks/search_speedup.py --preset smoke --set search.num_samples=4

What a user would otherwise pay is N independent runs, each augmenting and labeling its own
transfer set and training to the last epoch. What the search pays is one run of the same space
where trials share transfer sets and soft labels (content-addressed cache) and ASHA stops the
weak ones. Both are timed here, one after the other, with the same teacher, data and machine:

1. ``teacher``: fine-tune (or reuse) the preset's teacher once. Shared by both sides and
   *excluded* from both times (it is printed on its own).
2. ``full``: one trial at the centre of the space (``SearchSpace.centre_sample``: middle choice,
   midpoint of each range), run through the search's own machinery (Ray Tune + Train, MLflow),
   no early stopping, in its own work root: cold transfer-set and soft-label caches.
3. ``search``: the preset's search (Optuna, ASHA as the preset says, N trials) in another fresh
   work root: cold caches again, so all the sharing it gets is sharing between its own trials.

Each side runs in its own Python process (a fresh local Ray each, so no actor or cache state
leaks from one to the other); its wall time covers the whole ``run_search`` call, Ray start-up
included. Prints both times and ``search / (N x full)`` (issue 7's target: <= 0.4), the trials
ASHA stopped, the cache hits, and the search's Pareto front.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PHASES = ("teacher", "full", "search")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tang", help="search_spaces preset (default tang)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for both sides (repeatable)")
    ap.add_argument("--assets", default=None, help="local assets dir (default: as the CLI)")
    ap.add_argument("--work-root", default=".distillray-bench/search_speedup",
                    help="teachers are cached here; each invocation runs its two sides in a "
                         "fresh subdirectory")
    ap.add_argument("--tracking-uri", default=None,
                    help="MLflow store (default: sqlite under --work-root)")
    ap.add_argument("--phase", choices=PHASES, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# one side, in its own process

def run_phase(args) -> dict:
    from mlflow.tracking import MlflowClient

    from orchestrator import tracking
    from orchestrator.cli import resolve_run
    from orchestrator.config import build_config
    from orchestrator.pipeline import load_data
    from orchestrator.search import ensure_teachers, run_search

    extra = {"work_root": args.work_root, "tracking.uri": args.tracking_uri}
    space, cfg, overrides = resolve_run(args.preset, args.set, args.assets, extra)
    if args.phase == "teacher":
        client = MlflowClient(tracking.resolve_uri(cfg.tracking.uri))
        exp = tracking.experiment_id_for(client, cfg)
        t0 = time.perf_counter()
        refs = ensure_teachers(cfg, load_data(cfg), client, exp)
        return {"seconds": time.perf_counter() - t0, "teachers": {t: r.path for t, r in refs.items()}}
    if args.phase == "full":
        centre = space.centre_sample()
        space = space.pinned(centre)
        fixed = {"search.num_samples": 1, "search.scheduler": "none", "search.objectives": [],
                 "search.register_model": None}
        overrides.update(fixed)
        cfg = build_config(space.config | {"search": space.search}, overrides)
    t0 = time.perf_counter()
    out = run_search(cfg, space, overrides, resume=False)
    seconds = time.perf_counter() - t0
    table = out.table.drop(columns=["checkpoint_path"], errors="ignore")
    return {"seconds": seconds, "name": out.name, "parent_run_id": out.parent_run_id,
            "trials": table.to_dict(orient="records"),
            "pareto": out.pareto.drop(columns=["checkpoint_path"], errors="ignore")
            .to_dict(orient="records") if len(out.pareto) else [],
            "cache": _cache_stats(cfg, out.parent_run_id)}


def _cache_stats(cfg, parent_run_id: str) -> dict[str, float]:
    """Bundle reuse, soft-label cache hits / misses and labeling seconds, summed over the
    search's child runs."""
    from mlflow.tracking import MlflowClient

    from orchestrator import tracking

    client = MlflowClient(tracking.resolve_uri(cfg.tracking.uri))
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              f"tags.mlflow.parentRunId = '{parent_run_id}'")
    sums: dict[str, float] = {}
    for r in runs:
        for k, v in r.data.metrics.items():
            if k.startswith(("label_cache_", "label_seconds", "bundle_reused")):
                sums[k] = sums.get(k, 0.0) + v
    return sums


# ---------------------------------------------------------------------------------------------
# the driver: three child processes, one after the other

def spawn(args, phase: str, work_root: Path, uri: str, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--preset", args.preset,
           "--work-root", str(work_root), "--tracking-uri", uri, "--out", str(out)]
    for s in args.set:
        cmd += ["--set", s]
    if args.assets:
        cmd += ["--assets", args.assets]
    print(f"\n[bench] {phase}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, cwd=str(REPO))
    if rc != 0:
        raise SystemExit(f"[bench] the {phase} side failed (exit {rc}); see its output above")
    res = json.loads(out.read_text())
    res["process_seconds"] = time.perf_counter() - t0
    return res


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.phase:
        res = run_phase(args)
        Path(args.out).write_text(json.dumps(res, default=str, indent=1))
        return 0

    root = Path(args.work_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    uri = args.tracking_uri or f"sqlite:///{root / 'mlflow.db'}"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = root / stamp
    sides = {}
    for side in ("full", "search"):  # fresh caches for each side; one teacher for both
        (run_dir / side).mkdir(parents=True)
        (root / "teachers").mkdir(exist_ok=True)
        os.symlink(root / "teachers", run_dir / side / "teachers")
    teacher = spawn(args, "teacher", root, uri, run_dir / "teacher.json")
    for side in ("full", "search"):
        args_side = argparse.Namespace(**vars(args))
        args_side.set = [*args.set, f"search.name={args.preset}-{side}-{stamp}"]
        sides[side] = spawn(args_side, side, run_dir / side, uri, run_dir / f"{side}.json")
    report(args, teacher, sides["full"], sides["search"], run_dir)
    return 0


def report(args, teacher: dict, full: dict, search: dict, run_dir: Path) -> None:
    n = len(search["trials"])
    t_full, t_search = full["seconds"], search["seconds"]
    ratio = t_search / (n * t_full)
    statuses = [t["status"] for t in search["trials"]]
    print(f"\n== {args.preset}: a {n}-trial search vs {n} x one full trial (same run, "
          f"same teacher; results in {run_dir}) ==")
    print(f"teacher fine-tune (shared, excluded): {teacher['seconds']:.0f} s")
    full_trial = full["trials"][0] if full["trials"] else {}
    print(f"one full trial (centre of the space, cold caches, no early stopping): {t_full:.0f} s, "
          f"{full_trial.get('epochs')} epochs, best dev_score {full_trial.get('best_dev_score')}")
    print(f"  config: {json.dumps(full_trial.get('config', {}), default=str)}")
    print(f"{n}-trial search (cold caches, shared between its trials): {t_search:.0f} s; "
          f"{statuses.count('DONE')} ran to the end, {statuses.count('STOPPED_EARLY')} stopped "
          f"early, {statuses.count('ERROR')} failed")
    print(f"{n} x one full trial: {n * t_full:.0f} s")
    print(f"ratio search / ({n} x full trial): {ratio:.3f}  (target <= 0.4: "
          f"{'met' if ratio <= 0.4 else 'MISSED'})")
    for side, res in (("full trial", full), ("search", search)):
        c = res.get("cache", {})
        if c:
            print(f"transfer sets and soft labels, {side}: " + ", ".join(f"{k} {v:g}" for k, v in sorted(c.items())))
    print("\ntrials of the search:")
    for t in search["trials"]:
        print(f"  {t['trial_id']}  {t['status']:<13} epochs {t.get('epochs')}  best_dev_score "
              f"{_f(t.get('best_dev_score'))}  latency_ms {_f(t.get('latency_ms'))}  "
              f"params {t.get('non_embedding_params')}")
    print("Pareto front (best_dev_score up, batch-1 latency down):")
    for t in search["pareto"]:
        print(f"  {t['trial_id']}  best_dev_score {_f(t.get('best_dev_score'))}  latency_ms "
              f"{_f(t.get('latency_ms'))}  params {t.get('non_embedding_params')}")


def _f(v) -> str:
    return "-" if v is None else f"{float(v):.4g}"


if __name__ == "__main__":
    sys.exit(main())
