"""Teacher throughput: a naive ``transformers.pipeline`` loop vs the teacher pool in fp32 and in
reduced precision, against the machine's own matmul peak.

Same teacher, same texts, one run, ``--repeats`` interleaved rounds, medians reported. Each
round: the naive loop (its own process, Ray stopped), the matmul peak in fp32 and bf16 (square
``--peak-size`` matmuls at the pool's thread count, best of a few), then Ray and one pool per
precision (fp32 and ``--precision``, in alternating order; start-up and the fidelity gate not
timed), each labeling every text cold (a fresh cache directory) and warm (a new cache instance on
the same directory, as another trial would), then Ray stopped again::

    .venv/bin/python benchmarks/teacher_throughput.py --teacher demo --n 3000 --repeats 3
    .venv/bin/python benchmarks/teacher_throughput.py --teacher path/to/finetuned --num-actors 2

``--teacher demo`` fine-tunes (or reuses, by its key, under ``--work-root``) the teacher of
``search_spaces/demo.yaml``; the default teacher (minilm-l6-uncased from the shared assets) has
an untrained head: fine for throughput, meaningless for agreement. Achieved GFLOP/s counts the
teacher's linear layers (2 x in x out FLOPs per real, unpadded token), the work a matmul peak
bounds. The last line printed is one JSON object with every ratio (``pool_fp32_vs_naive``,
``pool_bf16_vs_fp32``, ``bf16_agreement``, ``bf16_peak_fraction``, ...), the machine
(``cpu_model``, ``amx``, ``torch_threads``: figures of different machines are not one series)
and the settings the pool's probe chose (``bf16_settings``, ``bf16_probe_texts_per_s``). Beside
the wall-clock figures, ``*_cpu_*`` ones divide by the actors' CPU seconds and the peak
matmuls' CPU seconds (``bf16_cpu_peak_fraction``): on a core shared with other processes,
those are the ones to compare.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ASSETS = Path(os.environ.get("DISTILLRAY_ASSETS", REPO.parent / "shared" / "assets"))


def read_sst2(path: Path, n: int) -> list[str]:
    texts = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            texts.append(row["sentence"].strip())
            if len(texts) >= n:
                break
    return texts


def augmented(sentences: list[str], n: int) -> list[str]:
    """The first ``n`` rows of the transfer set built from ``n/10`` sentences (inline)."""
    import pyarrow.parquet as pq

    from orchestrator.config import AugmentConfig
    from orchestrator.stages.augment_stage import augment_dataset
    from tasks.data import Example

    base = [Example(i, t) for i, t in enumerate(sentences[: max(1, n // 10)])]
    cfg = AugmentConfig(enabled=True, num_workers=1, nltk_data=str(ASSETS / "nltk_data"))
    res = augment_dataset(base, cfg, tempfile.mkdtemp(prefix="distillray-bench-aug-"),
                          data_key=f"teacher-bench-{len(base)}", progress=False)
    return pq.read_table(res.path).column("text_a").to_pylist()[:n]


def naive_labeler(teacher: str, max_length: int):
    """A ``transformers.pipeline("text-classification")`` with its default batching, warmed up;
    returns a function that labels a list of texts and returns the seconds it took."""
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    pipe = pipeline("text-classification", model=teacher, device=-1)
    pipe(["warm-up", "not timed"], truncation=True, max_length=max_length)

    def run(texts: list[str]) -> float:
        t0 = time.perf_counter()
        out = pipe(texts, truncation=True, max_length=max_length)  # default batching
        seconds = time.perf_counter() - t0
        assert len(out) == len(texts)
        return seconds

    return run


def _naive_worker(conn, teacher: str, max_length: int, texts: list[str]) -> None:
    """The naive loop in its own process (no Ray imported): one timed run per request."""
    run = naive_labeler(teacher, max_length)
    conn.send("ready")
    while conn.recv():
        conn.send(run(texts))


class NaiveProcess:
    """Runs :func:`naive_labeler` in a spawned process, so Ray's threads in the benchmark's own
    process (and Ray's daemons, stopped between rounds) never compete with it."""

    def __init__(self, teacher: str, max_length: int, texts: list[str]):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_naive_worker, args=(child, teacher, max_length, texts),
                                daemon=True)
        self.proc.start()
        if self.conn.recv() != "ready":
            raise RuntimeError("the naive pipeline process did not start")

    def __call__(self) -> float:
        self.conn.send(True)
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send(False)
        self.proc.join(timeout=30)


def matmul_peak(dtype: str, size: int, threads: int, tries: int = 3,
                clock=time.perf_counter) -> float:
    """GFLOP/s of the best of ``tries`` ``size``-square matmuls in ``dtype`` on ``threads``,
    timed by ``clock`` (``time.process_time``: CPU seconds, which other processes on a shared
    core do not inflate)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=g).to(getattr(torch, dtype))
        b = torch.randn(size, size, generator=g).to(getattr(torch, dtype))
        torch.mm(a, b)  # warm-up
        best = float("inf")
        for _ in range(tries):
            t0 = clock()
            torch.mm(a, b)
            best = min(best, clock() - t0)
        return 2 * size ** 3 / best / 1e9
    finally:
        torch.set_num_threads(old)


def linear_flops(teacher: str, texts: list[str], max_length: int) -> float:
    """FLOPs of the teacher's linear layers over the texts' real (unpadded) tokens."""
    import torch
    from transformers import AutoTokenizer

    from orchestrator.teachers.teacher_model import load_teacher

    t = load_teacher(teacher)
    per_token = sum(2 * m.in_features * m.out_features for name, m in t.model.named_modules()
                    if isinstance(m, torch.nn.Linear) and "encoder" in name)
    tok = AutoTokenizer.from_pretrained(teacher)
    tokens = sum(len(x) for x in tok(texts, truncation=True, max_length=max_length)["input_ids"])
    return float(per_token) * tokens


def demo_teacher(work_root: str) -> str:
    """The teacher of search_spaces/demo.yaml (fine-tuned now, or reused by its key)."""
    import yaml

    from orchestrator.config import build_config, find_assets, use_local_assets
    from orchestrator.stages.pipeline import load_data
    from orchestrator.stages.teacher import finetune_teacher
    from tasks.loaders import data_fingerprint

    preset = yaml.safe_load((REPO / "search_spaces" / "demo.yaml").read_text())["config"]
    cfg = use_local_assets(build_config(preset, {"work_root": work_root}), find_assets())
    d = load_data(cfg)["sst2"]
    res = finetune_teacher(cfg.teacher, d.task, d.train, next(iter(d.dev.values())), work_root,
                           data_fingerprint(d.train), log=print)
    return str(res.path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default=str(ASSETS / "models" / "minilm-l6-uncased"),
                    help="a teacher dir, or 'demo' (search_spaces/demo.yaml's, under --work-root)")
    ap.add_argument("--work-root", default=".distillray",
                    help="where --teacher demo is fine-tuned or found")
    ap.add_argument("--data", default=str(ASSETS / "glue" / "SST-2" / "train.tsv"))
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3,
                    help="interleaved rounds of naive / peaks / pools; medians reported")
    ap.add_argument("--num-cpus", type=float, default=os.cpu_count(),
                    help="CPUs Ray may use (default: all cores)")
    ap.add_argument("--num-actors", type=int, default=1)
    ap.add_argument("--cpus-per-actor", type=float, default=None,
                    help="default: num-cpus / num-actors")
    ap.add_argument("--gpus-per-actor", type=float, default=0.0,
                    help="> 0: actors on GPU, e.g. 1 (then --precision fp16 or bf16)")
    ap.add_argument("--precision", default="bf16", choices=("bf16", "fp16"),
                    help="the reduced precision measured against fp32")
    ap.add_argument("--token-budget", type=int, default=None,
                    help="padded tokens per batch (default: the pool's, 2048 CPU / 16384 GPU)")
    ap.add_argument("--max-batch-size", type=int, default=256)
    ap.add_argument("--chunk-size", type=int, default=512)
    ap.add_argument("--peak-size", type=int, default=2048)
    ap.add_argument("--cache-root", default=None,
                    help="parent of the fresh per-round cache dirs (default: the temp dir)")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--no-probe", action="store_true",
                    help="pool.probe=false: label with the default settings, not the probe's")
    ap.add_argument("--augment", action="store_true",
                    help="texts = Tang et al. augmentations (tasks.augment) of n/10 sentences")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")

    import ray
    import torch

    from orchestrator.config import PoolConfig
    from orchestrator.runtime.precision import cpu_bf16_support
    from orchestrator.teachers.labeling_probe import machine
    from orchestrator.teachers.teacher_pool import TeacherPool, fidelity

    if args.teacher == "demo":
        args.teacher = demo_teacher(args.work_root)
    texts = read_sst2(Path(args.data), args.n)
    if args.augment:
        texts = augmented(texts, args.n)
    low = args.precision
    print(f"{len(texts)} {'augmented ' if args.augment else ''}texts from {args.data}; teacher "
          f"{args.teacher}; {os.cpu_count()} cores; CPU bf16: {cpu_bf16_support()[1]}; "
          f"{args.repeats} interleaved rounds", flush=True)
    flops = linear_flops(args.teacher, texts, args.max_length)
    naive = None if args.skip_naive else NaiveProcess(args.teacher, args.max_length, texts)

    cpus = args.cpus_per_actor or args.num_cpus / args.num_actors
    cfgs = {p: PoolConfig(num_actors=args.num_actors, cpus_per_actor=cpus,
                          gpus_per_actor=args.gpus_per_actor, token_budget=args.token_budget,
                          max_batch_size=args.max_batch_size, precision=p,
                          probe=not args.no_probe,
                          fidelity_threshold=0.0)  # measured here, never falls back
            for p in ("fp32", low)}
    threads = max(1, round(cpus))
    times: dict[str, list[float]] = {k: [] for k in (
        "naive", "cold_fp32", "warm_fp32", f"cold_{low}", f"warm_{low}")}
    peaks: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    cpu_peaks: dict[str, list[float]] = {"float32": [], "bfloat16": []}  # per CPU second
    cpu_times: dict[str, list[float]] = {f"cold_{p}": [] for p in ("fp32", low)}
    settings: dict = {}
    logits: dict[str, np.ndarray] = {}
    gate = {}
    for r in range(args.repeats):
        if naive is not None:  # Ray is down here: the naive loop has the machine to itself
            times["naive"].append(naive())
        if args.gpus_per_actor <= 0:
            for dt in peaks:
                peaks[dt].append(matmul_peak(dt, args.peak_size, threads))
                cpu_peaks[dt].append(matmul_peak(dt, args.peak_size, threads,
                                                 clock=time.process_time))
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        try:
            for p in (("fp32", low) if r % 2 == 0 else (low, "fp32")):
                t0 = time.perf_counter()
                pool = TeacherPool(args.teacher, cfgs[p], chunk_size=args.chunk_size)
                try:
                    start_s = time.perf_counter() - t0
                    if r == 0:
                        print(f"pool {p}: {cfgs[p].num_actors} actor(s) x {cpus:g} CPU "
                              f"({pool.info['threads']} torch threads, token budget "
                              f"{pool.info['token_budget']}, {pool.info['precision']}; naive "
                              f"pipeline: {torch.get_num_threads()} threads), started in "
                              f"{start_s:.1f}s (not timed)", flush=True)
                    # the fidelity gate, once per pool (not timed: once per teacher in use)
                    pool.settle_precision(texts, None, max_length=args.max_length)
                    gate = pool.fidelity_metrics() or gate
                    if pool.labeling is not None:
                        settings[p] = pool.labeling
                    root = tempfile.mkdtemp(prefix=f"distillray-bench-cache-{r}-{p}-",
                                            dir=args.cache_root)
                    cpu0 = sum(i["cpu_seconds"] for i in ray.get(
                        [a.info.remote() for a in pool.actors]))
                    cold = pool.label_texts(texts, max_length=args.max_length,
                                            cache=pool.cache(root, max_length=args.max_length),
                                            progress=False)
                    cpu_times[f"cold_{p}"].append(sum(i["cpu_seconds"] for i in ray.get(
                        [a.info.remote() for a in pool.actors])) - cpu0)
                    warm = pool.label_texts(texts, max_length=args.max_length,
                                            cache=pool.cache(root, max_length=args.max_length),
                                            progress=False)
                finally:
                    pool.shutdown()
                assert cold.precision == p, (cold.precision, p)
                assert cold.misses == len(texts) and warm.hits == len(texts)
                assert np.array_equal(cold.logits, warm.logits), "warm labels differ from cold"
                times[f"cold_{p}"].append(cold.seconds)
                times[f"warm_{p}"].append(warm.seconds)
                logits[p] = cold.logits
        finally:
            ray.shutdown()
        line = "  ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items() if v)
        peak_line = "  ".join(f"{k} peak {v[-1]:.0f} GFLOP/s" for k, v in peaks.items() if v)
        print(f"round {r + 1}: {line}  {peak_line}", flush=True)
    if naive is not None:
        naive.close()
    med = {k: statistics.median(v) for k, v in times.items() if v}
    peak = {k: statistics.median(v) for k, v in peaks.items() if v}
    cpu_med = {k: statistics.median(v) for k, v in cpu_times.items() if v}
    cpu_peak = {k: statistics.median(v) for k, v in cpu_peaks.items() if v}
    n = len(texts)
    agree = fidelity(logits["fp32"], logits[low])
    facts = machine()
    out: dict = {"n": n, "rounds": args.repeats, "cpu_model": facts["cpu_model"],
                 "amx": facts["amx"], "torch_threads": threads}
    for p, rec in settings.items():  # the pool's probe: its choice and rate on the probe
        out[f"{p}_settings"] = rec["choice"]
        mine = [t for t in rec["trials"] if t["settings"] == rec["choice"]]
        if mine:
            out[f"{p}_probe_texts_per_s"] = mine[-1]["texts_per_s"]
    print(f"\nmedians over {args.repeats} rounds:")
    for k in med:
        rate = n / med[k]
        out[f"{k}_texts_per_s"] = rate
        extra = ""
        if k.startswith("cold_"):
            gflops = flops / med[k] / 1e9
            out[f"{k}_linear_gflops"] = gflops
            extra = f"  {gflops:7.1f} linear-layer GFLOP/s"
        print(f"  {k:<12} {med[k]:8.3f} s  {rate:10.1f} texts/s{extra}")
    for k, v in peak.items():
        out[f"matmul_peak_{k}_gflops"] = v
        print(f"  matmul peak {k}: {v:.1f} GFLOP/s ({args.peak_size}-square, {threads} threads)")
    # per CPU second of the actors (and of the peak's matmuls): what a shared core's other
    # processes do not inflate
    for k, v in cpu_med.items():
        out[f"{k}_cpu_texts_per_s"] = n / v
        out[f"{k}_cpu_linear_gflops"] = flops / v / 1e9
        print(f"  {k:<12} {v:8.3f} CPU s  {n / v:10.1f} texts per CPU s")
    for k, v in cpu_peak.items():
        out[f"matmul_peak_{k}_cpu_gflops"] = v
    if "naive" in med:
        out["pool_fp32_vs_naive"] = med["naive"] / med["cold_fp32"]
        out[f"pool_{low}_vs_naive"] = med["naive"] / med[f"cold_{low}"]
    out[f"pool_{low}_vs_fp32"] = med["cold_fp32"] / med[f"cold_{low}"]
    out[f"{low}_agreement"] = agree["agreement"]
    out[f"{low}_logit_rmse"] = agree["rmse"]
    out.update({f"gate_{k}": v for k, v in gate.items()})
    if peak:
        out["fp32_peak_fraction"] = out["cold_fp32_linear_gflops"] / peak["float32"]
        if low == "bf16":
            out["bf16_peak_fraction"] = out["cold_bf16_linear_gflops"] / peak["bfloat16"]
    if cpu_peak and cpu_med:
        out["fp32_cpu_peak_fraction"] = out["cold_fp32_cpu_linear_gflops"] / cpu_peak["float32"]
        if low == "bf16":
            out["bf16_cpu_peak_fraction"] = (out["cold_bf16_cpu_linear_gflops"]
                                             / cpu_peak["bfloat16"])
    out["warm_vs_cold_fp32"] = med["warm_fp32"] / med["cold_fp32"]
    print(f"{low} vs fp32 labels over all {n} texts: argmax agreement {agree['agreement']:.4%}, "
          f"logit RMSE {agree['rmse']:.4g}")
    print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in out.items()}))


if __name__ == "__main__":
    main()
