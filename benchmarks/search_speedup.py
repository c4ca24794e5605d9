"""An N-trial search against N x one full trial, measured in the same run.

    .venv/bin/python benchmarks/search_speedup.py                       # tang preset, 8 trials
    .venv/bin/python benchmarks/search_speedup.py --preset smoke --set search.num_samples=4
    .venv/bin/python benchmarks/search_speedup.py --baseline centre     # quicker baseline

What a user would otherwise pay is N independent runs, each augmenting and labeling its own
transfer set and training to the last epoch. What the search pays is one run of the same space
where trials share transfer sets and soft labels (content-addressed cache) and ASHA stops the
weak ones. Both are timed here, one after the other, with the same teacher, data and machine:

1. ``teacher``: fine-tune (or reuse) the preset's teacher once. Shared by both sides and
   *excluded* from both times (it is printed on its own).
2. ``search``: the preset's search (Optuna, ASHA as the preset says, N trials) in a fresh work
   root: cold caches, so all the sharing it gets is sharing between its own trials.
3. The baseline, N full trials, each run through the search's own machinery (Ray Tune + Train,
   MLflow) to its last epoch with no early stopping, each in its own fresh work root (cold
   transfer-set and soft-label caches):

   * ``--baseline sampled`` (default): the N configurations the search drew, one by one. The
     same work the user would have paid for those N trials without the search's sharing and
     stopping: the fair pairing, since trial costs differ several-fold across the space.
   * ``--baseline centre``: one trial at the centre of the space (``SearchSpace.centre_sample``:
     middle choice, midpoint of each range), timed once and counted N times. Quicker, but only
     as representative as the centre is.
   * ``--baseline both``.

   A trial run alone gets the whole share of the machine the search splits among its
   ``search.max_concurrent`` trials: ``train.torch_threads`` = max_concurrent x the preset's
   threads per trial (a search that packs two one-thread trials onto two cores is compared with
   trials that each have both cores).

Each side runs in its own Python process (a fresh local Ray each, so no actor or cache state
leaks from one to the other); its wall time covers the whole ``run_search`` call, Ray start-up
included. Prints the times and ``search / (N x full trial)`` (the target: <= 0.4), the trials
ASHA stopped, the labels paid for, and the search's Pareto front.
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

PHASES = ("teacher", "full", "alone", "search")


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
    ap.add_argument("--baseline", choices=("sampled", "centre", "both"), default="sampled",
                    help="N full trials: the search's own N configurations run alone "
                         "(sampled, default), or the centre of the space timed once (centre)")
    ap.add_argument("--tracking-uri", default=None,
                    help="MLflow store (default: sqlite under --work-root)")
    ap.add_argument("--phase", choices=PHASES, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--sample", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# one side, in its own process

def run_phase(args) -> dict:
    from mlflow.tracking import MlflowClient

    from orchestrator.app.run import resolve_run
    from orchestrator.config import with_overrides
    from orchestrator.runtime import tracking
    from orchestrator.search.search import ensure_teachers, run_search
    from orchestrator.stages.pipeline import load_data

    extra = {"work_root": args.work_root, "tracking.uri": args.tracking_uri}
    space, cfg, overrides = resolve_run(args.preset, args.set, args.assets, extra)
    if args.phase == "teacher":
        client = MlflowClient(tracking.resolve_uri(cfg.tracking.uri))
        exp = tracking.experiment_id_for(client, cfg)
        t0 = time.perf_counter()
        refs = ensure_teachers(cfg, load_data(cfg), client, exp)
        return {"seconds": time.perf_counter() - t0, "teachers": {t: r.path for t, r in refs.items()}}
    if args.phase in ("full", "alone"):  # one trial to its end: no scheduler, no searcher choice
        sample = (space.centre_sample() if args.phase == "full"
                  else json.loads(Path(args.sample).read_text()))
        space = space.pinned(sample)
        fixed = {"search.num_samples": 1, "search.scheduler": "none", "search.objectives": [],
                 "search.register_model": None,
                 # a trial alone has the machine share the search splits among its concurrent
                 # trials: max_concurrent x one trial's threads
                 "train.torch_threads": alone_threads(cfg)}
        overrides.update(fixed)  # the trials' configs
        cfg = with_overrides(cfg, fixed)
    t0 = time.perf_counter()
    out = run_search(cfg, space, overrides, resume=False)
    seconds = time.perf_counter() - t0
    table = out.table.drop(columns=["checkpoint_path"], errors="ignore")
    return {"seconds": seconds, "name": out.name, "parent_run_id": out.parent_run_id,
            "trials": table.to_dict(orient="records"),
            "pareto": out.pareto.drop(columns=["checkpoint_path"], errors="ignore")
            .to_dict(orient="records") if len(out.pareto) else [],
            "cache": _cache_stats(cfg, out.parent_run_id)}


def alone_threads(cfg) -> int:
    tc = cfg.train
    return cfg.search.max_concurrent * (tc.torch_threads or max(1, int(tc.cpus_per_worker)))


def _cache_stats(cfg, parent_run_id: str) -> dict[str, float]:
    """Bundle reuse, soft-label cache hits / misses and labeling seconds, summed over the
    search's child runs."""
    from mlflow.tracking import MlflowClient

    from orchestrator.runtime import tracking

    client = MlflowClient(tracking.resolve_uri(cfg.tracking.uri))
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              f"tags.mlflow.parentRunId = '{parent_run_id}'")
    sums: dict[str, float] = {}
    for r in runs:
        for k, v in r.data.metrics.items():
            if k.startswith(("label_cache_", "label_seconds", "bundle_reused", "transfer_size")) \
                    and not k.startswith("transfer_size_"):
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
    if args.sample:
        cmd += ["--sample", args.sample]
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
    (root / "teachers").mkdir(exist_ok=True)
    uri = args.tracking_uri or f"sqlite:///{root / 'mlflow.db'}"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = root / stamp
    run_dir.mkdir(parents=True)

    def side(phase: str, tag: str, sample: dict | None = None) -> dict:
        """One side in a fresh work root (cold caches) that shares only the teacher."""
        work = run_dir / tag
        work.mkdir()
        os.symlink(root / "teachers", work / "teachers")
        a = argparse.Namespace(**vars(args))
        a.set = [*args.set, f"search.name={args.preset}-{tag}-{stamp}"]
        if sample is not None:
            a.sample = str(run_dir / f"{tag}.sample.json")
            Path(a.sample).write_text(json.dumps(sample, default=str))
        return spawn(a, phase, work, uri, run_dir / f"{tag}.json")

    teacher = spawn(args, "teacher", root, uri, run_dir / "teacher.json")
    search = side("search", "search")
    alone = ([side("alone", f"alone-{i}", t["config"]) for i, t in enumerate(search["trials"])]
             if args.baseline in ("sampled", "both") else [])
    centre = side("full", "centre") if args.baseline in ("centre", "both") else None
    report(args, teacher, search, alone, centre, run_dir)
    return 0


def report(args, teacher: dict, search: dict, alone: list[dict], centre: dict | None,
           run_dir: Path) -> None:
    n = len(search["trials"])
    t_search = search["seconds"]
    statuses = [t["status"] for t in search["trials"]]
    print(f"\n== {args.preset}: a {n}-trial search vs {n} full trials (same run, same teacher; "
          f"results in {run_dir}) ==")
    print(f"teacher fine-tune (shared, excluded): {teacher['seconds']:.0f} s")
    print(f"{n}-trial search (cold caches, shared between its trials): {t_search:.0f} s; "
          f"{statuses.count('DONE')} ran to the end, {statuses.count('STOPPED_EARLY')} stopped "
          f"early, {statuses.count('ERROR')} failed")
    if alone:
        each = [a["seconds"] for a in alone]
        total = sum(each)
        print(f"the same {n} configurations, each run alone to its last epoch with cold caches: "
              f"{total:.0f} s in all (per trial min {min(each):.0f} / median "
              f"{sorted(each)[len(each) // 2]:.0f} / max {max(each):.0f} s)")
        ratio = t_search / total
        print(f"ratio search / ({n} full trials, the search's own configurations): {ratio:.3f}  "
              f"(target <= 0.4: {'met' if ratio <= 0.4 else 'MISSED'})")
    if centre is not None:
        c = centre["trials"][0] if centre["trials"] else {}
        print(f"one full trial at the centre of the space (cold caches, no early stopping): "
              f"{centre['seconds']:.0f} s, best dev_score {_f(c.get('best_dev_score'))}; config "
              f"{json.dumps(c.get('config', {}), default=str)}")
        print(f"ratio search / ({n} x the centre trial): {t_search / (n * centre['seconds']):.3f}")
    sides = [("search", search)] + [(f"alone {i}", a) for i, a in enumerate(alone)]
    sides += [("centre trial", centre)] if centre else []
    for name, res in sides:
        c = res.get("cache", {})
        if c:
            print(f"labels, {name}: " + ", ".join(f"{k} {v:g}" for k, v in sorted(c.items())))
    print("\ntrials of the search (alone: the same configuration run on its own):")
    for i, t in enumerate(search["trials"]):
        solo = f"  alone {alone[i]['seconds']:.0f} s" if i < len(alone) else ""
        print(f"  {t['trial_id']}  {t['status']:<13} epochs {t.get('epochs')}  best_dev_score "
              f"{_f(t.get('best_dev_score'))}  latency_ms {_f(t.get('latency_ms'))}  "
              f"params {t.get('non_embedding_params')}{solo}")
    print("Pareto front (best_dev_score up, batch-1 latency down):")
    for t in search["pareto"]:
        print(f"  {t['trial_id']}  best_dev_score {_f(t.get('best_dev_score'))}  latency_ms "
              f"{_f(t.get('latency_ms'))}  params {t.get('non_embedding_params')}")


def _f(v) -> str:
    return "-" if v is None else f"{float(v):.4g}"


if __name__ == "__main__":
    sys.exit(main())
