#!/usr/bin/env python
"""Kill a search at each named point, run the same command again, and check that nothing was lost
or duplicated.

    .venv/bin/python scripts/fault_matrix.py                       # every point, once
    .venv/bin/python scripts/fault_matrix.py --runs 20             # the full matrix, 20 times
    .venv/bin/python scripts/fault_matrix.py --points rung_waiting,register_model --runs 3

The search is the smoke preset (tiny generated data, tiny random teacher) with four draws that
meet the first rung together and the best student registered, so every stage a kill can cut
short is on its path; its rungs weigh dev score against parameter count, which (unlike
latency) is the same in every run. First one uninterrupted run (the reference), then for each
point a run with the fault armed (``orchestrator.runtime.faults``):

- driver points: the driver (with its Ray and every worker) is SIGKILLed when the point is
  reached, and the same command is run again to its end;
- ``teacher_actor`` and ``trial_process``: the process itself dies (a teacher actor mid-labeling,
  a trial's process mid-epoch); the same driver carries on.

Checked after each: the command ended well (and resumed the search where it had one); the
search has exactly num_samples trials, none failed; one visible MLflow child run per trial,
none left RUNNING; the scheduler's rungs name exactly those trials and nobody waits; the
soft-label cache verifies (every shard's checksum, finite logits, and the same logits as the
reference run for every text both labeled); one registered model version, from the best trial's
run; and the best trial has the reference's configuration and score, or the difference is
explained (the best trial, here or in the reference, resumed from a checkpoint, and a resumed
trial draws its batches anew). The last line printed is a JSON summary.

With ``--root``, the matrix resumes: every finished cell is appended to ``<root>/ledger.jsonl``
and the reference run is kept, so the same command run again (after a reboot, or the end of a
working session) runs only the cells not yet recorded and prints the table over all of them.
A cell cut short is run again from scratch.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.runtime import faults, tracking  # noqa: E402

NUM_SAMPLES = 4
MODEL = "fault-matrix-student"
# Pareto ASHA's second objective is the parameter count, not the preset's measured latency: a
# latency differs from run to run, and so would the rung decisions and the best trial, which the
# checks compare with the reference run's
SETS = [f"search.num_samples={NUM_SAMPLES}", "search.startup_rung=synchronous",
        f"search.register_model={MODEL}", "teacher.epochs=2",
        "search.objectives=[dev_score:max, non_embedding_params:min]"]
# point -> (the fault armed, whether the driver is killed there)
POINTS = {
    "teacher_finetune": ("teacher_finetune", True),
    "labeling": ("labeling", True),
    "first_trial": ("trial", True),
    "rung_waiting": ("rung_waiting", True),
    "resumed_trial": ("resumed_trial", True),
    "search_summary": ("search_summary", True),
    "register_model": ("register_model", True),
    "teacher_actor": ("teacher_actor:self", False),
    "trial_process": ("trial_epoch:self", False),
}


def command(root: Path) -> list[str]:
    cmd = [sys.executable, str(REPO / "tune_mkd.py"), "--preset", "smoke"]
    for s in SETS:
        cmd += ["--set", s]
    return cmd + ["--tracking-uri", f"sqlite:///{root / 'mlflow.db'}",
                  "--work-root", str(root / "work")]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", faults.ENV, faults.MARK_ENV)}
    # a private Ray: never a cluster recorded on this machine or named by the environment
    return env | {"RAY_ADDRESS": "local", "PYTHONPATH": str(REPO)} | extra


def run(root: Path, log: Path, fault: str | None = None, kill: bool = True,
        timeout: float = 900) -> tuple[int | None, bool]:
    """Run the search; with ``fault`` armed, SIGKILL its tree when the point is reached (``kill``)
    or let it carry on. Returns (exit code, None when killed; whether the point was reached)."""
    mark = root / "fault.mark"
    mark.unlink(missing_ok=True)
    env = environment(**({faults.ENV: fault, faults.MARK_ENV: str(mark)} if fault else {}))
    with open(log, "a") as out:
        proc = subprocess.Popen(command(root), cwd=root, env=env, stdout=out,
                                stderr=subprocess.STDOUT, process_group=0)
    deadline = time.time() + timeout
    try:
        while proc.poll() is None:
            if kill and fault and mark.exists():
                faults.kill_tree(proc)
                return None, True
            if time.time() > deadline:
                faults.kill_tree(proc)
                raise TimeoutError(f"no end in {timeout:.0f} s; see {log}")
            time.sleep(0.2)
        return proc.returncode, mark.exists()
    finally:
        if proc.poll() is None:
            faults.kill_tree(proc)


# -- what a finished search left ------------------------------------------------------------

def outcome(root: Path) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("distillray")
    parent = tracking.find_runs(client, exp.experiment_id, {tracking.TAG_SEARCH: "smoke",
                                                            tracking.TAG_KIND: "search"})
    children = tracking.find_runs(client, exp.experiment_id, {tracking.TAG_SEARCH: "smoke",
                                                              tracking.TAG_KIND: "trial"})
    summary = json.loads(Path(client.download_artifacts(
        parent[0].info.run_id, "search_summary.json", str(root))).read_text()) if parent else {}
    rung_files = sorted((root / "work" / "tune" / "smoke.scheduler").glob("pareto_asha-*.json"))
    rungs = json.loads(rung_files[-1].read_text()) if rung_files else {}
    try:
        versions = client.search_model_versions(f"name='{MODEL}'")
    except Exception:  # noqa: BLE001 - no such model yet
        versions = []
    best = summary.get("best", {})
    best_run = next((r for r in children
                     if r.data.tags.get(tracking.TAG_TRIAL) == str(best.get("trial_id"))), None)
    return {"parents": parent, "children": children, "summary": summary, "rungs": rungs,
            "versions": versions, "best_run": best_run,
            "best_config": sampled(best_run) if best_run else {},
            "best_score": best.get("best_dev_score"),
            # every trial's configuration and best dev score: ties for the best are common on
            # the smoke data, and any of the tied trials is the same answer
            "scores": [(sampled(r), r.data.metrics.get("best_dev_score")) for r in children]}


def sampled(run) -> dict:
    return {k: v for k, v in run.data.params.items() if k.startswith("sampled.")}


def share_probe(ref_root: Path, root: Path) -> None:
    """Give a run the reference's labeling-probe record (``pool.probe``). The probe picks the
    fastest bf16 settings by timing, so two work roots on one machine can pick different
    kernels, whose labels differ in the last bf16 bits, more than the 1e-4 the cache check
    allows; with the record, every run labels as the reference did, as a resumed run in one
    work root does."""
    src = ref_root / "work" / "labeling_probe"
    if src.is_dir():
        shutil.copytree(src, root / "work" / "labeling_probe")


def cache_rows(root: Path) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """Every soft-label shard under the work root, checked: (namespace -> text key -> logits,
    problems)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from orchestrator.teachers.cache import logits_matrix

    rows: dict[str, dict[str, np.ndarray]] = {}
    problems = []
    for shard in sorted((root / "work" / "soft_labels").glob("*/*.parquet")):
        data = shard.read_bytes()
        if hashlib.sha256(data).hexdigest() != shard.name[:-len(".parquet")]:
            problems.append(f"shard {shard.name}: checksum does not match its name")
            continue
        table = pq.read_table(pa.BufferReader(data))
        mat = logits_matrix(table.column("logits"))
        if not np.isfinite(mat).all():
            problems.append(f"shard {shard.name}: non-finite logits")
        ns = rows.setdefault(shard.parent.name, {})
        for k, row in zip(table.column("text_key").to_pylist(), mat):
            if k in ns and not np.allclose(ns[k], row, atol=1e-5):
                problems.append(f"text {k[:12]} has two different labels in {shard.parent.name}")
            ns[k] = row
    return rows, problems


def check(root: Path, reference: dict, ref_cache: dict, resumed_expected: bool,
          log: Path) -> tuple[list[str], list[str]]:
    """(failures, explained differences) of a finished search against the invariants."""
    fail, explained = [], []
    text = log.read_text(errors="replace")
    if resumed_expected and "resuming search smoke" not in text:
        fail.append("the second run did not resume the search")
    o = outcome(root)
    trials = {str(t["trial_id"]): t for t in o["summary"].get("trials", [])}
    if len(o["parents"]) != 1:
        fail.append(f"{len(o['parents'])} search runs in MLflow, want 1")
    if len(trials) != NUM_SAMPLES:
        fail.append(f"{len(trials)} trials in the search, want {NUM_SAMPLES}")
    if any(t["status"] == "ERROR" for t in trials.values()):
        fail.append("a trial failed: " + ", ".join(f"{k} {t.get('error')}" for k, t in
                                                   trials.items() if t["status"] == "ERROR"))
    visible = {}
    for r in o["children"]:
        visible.setdefault(r.data.tags.get(tracking.TAG_TRIAL), []).append(r)
    if set(visible) != set(trials):
        fail.append(f"MLflow child runs {sorted(visible)} != the search's trials {sorted(trials)}")
    if any(len(rs) > 1 for rs in visible.values()):
        fail.append("a trial has more than one child run")
    running = [t for t, rs in visible.items() if any(r.info.status == "RUNNING" for r in rs)]
    if running:
        fail.append(f"child runs left RUNNING: {running}")
    rungs = o["rungs"]
    if rungs:
        first = set(rungs["rungs"][min(rungs["rungs"], key=int)])
        if first != set(trials):
            fail.append(f"first rung holds {sorted(first)}, the search's trials are "
                        f"{sorted(trials)}")
        if any(set(r) - set(trials) for r in rungs["rungs"].values()):
            fail.append("a rung names a trial the search does not have")
        if rungs.get("waiting") or rungs.get("promoted"):
            fail.append(f"left waiting at a rung: {rungs.get('waiting')} {rungs.get('promoted')}")
    else:
        fail.append("no scheduler state saved")
    cache, problems = cache_rows(root)
    fail += problems
    for ns, rows in cache.items():
        ref = ref_cache.get(ns)
        if ref is None:
            explained.append(f"cache {ns[:12]} not in the reference (another teacher)")
            continue
        bad = [k for k in rows.keys() & ref.keys() if not np.allclose(rows[k], ref[k], atol=1e-4)]
        if bad:
            fail.append(f"{len(bad)} cached labels differ from the reference run's")
    if len(o["versions"]) != 1:
        fail.append(f"{len(o['versions'])} registered versions of {MODEL}, want 1")
    elif o["best_run"] is None or o["versions"][0].run_id != o["best_run"].info.run_id:
        fail.append("the registered version is not the best trial's run")
    same = abs((o["best_score"] or 0) - (reference["best_score"] or 0)) < 1e-4 and any(
        c == o["best_config"] and s is not None and abs(s - reference["best_score"]) < 1e-4
        for c, s in reference["scores"])  # the reference's best, or a trial tied with it
    if not same:
        resumed = [x for x in (o["best_run"], reference["best_run"])
                   if x is not None and x.data.tags.get("distillray.attempts", "1") != "1"]
        lost = o["parents"][0].data.tags.get("distillray.lost_trials") if o["parents"] else None
        why = []
        if resumed:
            why.append("the best trial resumed from a checkpoint here or in the reference (its "
                       "batches after the resume are drawn anew)")
        if lost:
            why.append(f"trial(s) {lost} were lost with the driver and drawn again")
        msg = (f"best {o['best_score']} {o['best_config']} vs reference "
               f"{reference['best_score']} {reference['best_config']}")
        (explained if why else fail).append(msg + (": " + "; ".join(why) if why else ""))
    return fail, explained


DONE = "DONE"  # marks a finished reference run


class Ledger:
    """The finished cells of a matrix, one JSON line each, appended as they end (a line cut
    short by a kill is ignored, and its cell runs again)."""

    def __init__(self, path: Path):
        self.path = path
        self.cells: dict[tuple[int, str], str] = {}
        if path.is_file():
            text = path.read_text()
            if text and not text.endswith("\n"):  # cut short: the next line starts afresh
                with open(path, "a") as f:
                    f.write("\n")
            for line in text.splitlines():
                try:
                    row = json.loads(line)
                    self.cells[row["run"] - 1, row["point"]] = row["verdict"]
                except (ValueError, KeyError, TypeError):
                    continue

    def add(self, i: int, point: str, verdict: str, notes: list[str], seconds: float) -> None:
        self.cells[i, point] = verdict
        with open(self.path, "a") as f:
            f.write(json.dumps({"run": i + 1, "point": point, "verdict": verdict,
                                "notes": notes, "seconds": round(seconds)}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1, help="times to run the whole matrix")
    ap.add_argument("--points", default=",".join(POINTS),
                    help=f"comma-separated points (default: all): {', '.join(POINTS)}")
    ap.add_argument("--root", default=None, help="where runs are kept (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep every run's folder")
    args = ap.parse_args(argv)
    points = [p.strip() for p in args.points.split(",") if p.strip()]
    unknown = [p for p in points if p not in POINTS]
    if unknown:
        ap.error(f"unknown point(s) {unknown}; choose from {', '.join(POINTS)}")
    if args.runs < 1:
        ap.error("--runs must be >= 1")
    top = Path(args.root or tempfile.mkdtemp(prefix="fault-matrix-"))
    top.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    ref_root = top / "reference"
    if not (ref_root / DONE).is_file():  # kept from an earlier call with this root: reused
        shutil.rmtree(ref_root, ignore_errors=True)
        ref_root.mkdir()
        rc, _ = run(ref_root, ref_root / "log.txt")
        if rc != 0:
            print(f"the reference run failed (rc {rc}); see {ref_root / 'log.txt'}")
            return 2
        (ref_root / DONE).touch()
    reference = outcome(ref_root)
    ref_cache, problems = cache_rows(ref_root)
    if problems:
        print("the reference run's cache does not verify: " + "; ".join(problems))
        return 2
    print(f"reference: best {reference['best_score']:.4f} {reference['best_config']} "
          f"({time.time() - t0:.0f} s)", flush=True)

    ledger = Ledger(top / "ledger.jsonl")
    table: dict[str, list[str]] = {p: [] for p in points}  # pass | explained | FAIL | unreached
    for (i, p), verdict in ledger.cells.items():
        if p in table and i < args.runs:
            table[p].append(verdict)
    if ledger.cells:
        print(f"resuming: {sum(len(v) for v in table.values())} cell(s) already in "
              f"{ledger.path}", flush=True)
    for i in range(args.runs):
        for p in points:
            if (i, p) in ledger.cells:
                continue
            fault, kill_driver = POINTS[p]
            root = top / f"run{i + 1}-{p}"
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            share_probe(ref_root, root)
            log = root / "log.txt"
            t1 = time.time()
            try:
                rc, reached = run(root, log, fault, kill=kill_driver)
                if not reached:
                    table[p].append("unreached")
                    ledger.add(i, p, "unreached", [f"the point was never reached (rc {rc})"],
                               time.time() - t1)
                    continue
                if kill_driver:
                    rc, _ = run(root, log)  # the same command again, to its end
                if rc != 0:
                    fail, explained = [f"exit code {rc}"], []
                else:
                    # the search had started (its Tune state saved) unless the kill came before
                    resumed = kill_driver and p not in ("teacher_finetune", "labeling")
                    fail, explained = check(root, reference, ref_cache, resumed, log)
            except Exception as e:  # noqa: BLE001 - a broken run is a failed cell, go on
                fail, explained = [f"{type(e).__name__}: {e}"], []
            verdict = "FAIL" if fail else ("explained" if explained else "pass")
            table[p].append(verdict)
            ledger.add(i, p, verdict, fail + explained, time.time() - t1)
            print(f"run {i + 1} {p}: {verdict} ({time.time() - t1:.0f} s)"
                  + "".join(f"\n    {m}" for m in fail + explained), flush=True)
            if verdict == "pass" and not args.keep:
                shutil.rmtree(root, ignore_errors=True)

    print(f"\n{'point':<18} " + " ".join(f"{k:>9}" for k in
                                          ("pass", "explained", "FAIL", "unreached")))
    for p, vs in table.items():
        print(f"{p:<18} " + " ".join(f"{vs.count(k):>9}" for k in
                                     ("pass", "explained", "FAIL", "unreached")))
    failed = sum(v in ("FAIL", "unreached") for vs in table.values() for v in vs)
    print(json.dumps({"runs": args.runs, "points": points, "seconds": round(time.time() - t0),
                      "failed": failed,
                      "table": {p: {k: vs.count(k) for k in ("pass", "explained", "FAIL",
                                                             "unreached")}
                                for p, vs in table.items()}, "root": str(top)}))
    return 1 if failed else 0


if __name__ == "__main__":
    code = main()
    # Leave without the interpreter's teardown: a native library's background thread (loaded
    # with pyarrow's filesystems, MLflow and pandas; no Python frame is on the stack) aborts the
    # process with "terminate called without an active exception" in about one exit in three
    # of a short resumed call, after every line and the summary were written. The exit code is
    # the script's own.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
