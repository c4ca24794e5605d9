"""Teacher throughput: a naive ``transformers.pipeline`` loop vs the teacher pool, cold and warm.

Same teacher, same texts, one run, ``--repeats`` interleaved rounds (naive, pool cold, pool
warm), medians reported. The naive loop runs in its own process with Ray stopped; each round
starts Ray and the pool after it (start-up not timed) and stops them again::

    .venv/bin/python benchmarks/teacher_throughput.py --n 4000 --repeats 5
    .venv/bin/python benchmarks/teacher_throughput.py --teacher path/to/finetuned --num-actors 2

The default teacher (minilm-l6-uncased from the shared assets) has an untrained classification
head: fine for throughput, meaningless as labels. "cold" labels every text with a fresh cache
directory; "warm" repeats the run with a new cache instance on the same directory (as another
trial would: shards are read and verified from disk, nothing is recomputed).
"""
from __future__ import annotations

import argparse
import csv
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

    from orchestrator.augment_stage import augment_dataset
    from orchestrator.config import AugmentConfig
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default=str(ASSETS / "models" / "minilm-l6-uncased"))
    ap.add_argument("--data", default=str(ASSETS / "glue" / "SST-2" / "train.tsv"))
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3,
                    help="interleaved rounds of naive / pool cold / pool warm; medians reported")
    ap.add_argument("--num-cpus", type=float, default=os.cpu_count(),
                    help="CPUs Ray may use (default: all cores)")
    ap.add_argument("--num-actors", type=int, default=1)
    ap.add_argument("--cpus-per-actor", type=float, default=None,
                    help="default: num-cpus / num-actors")
    ap.add_argument("--gpus-per-actor", type=float, default=0.0,
                    help="> 0: actors on GPU (half precision), e.g. 1")
    ap.add_argument("--token-budget", type=int, default=None,
                    help="padded tokens per batch (default: the pool's, 2048 CPU / 16384 GPU)")
    ap.add_argument("--max-batch-size", type=int, default=256)
    ap.add_argument("--chunk-size", type=int, default=512)
    ap.add_argument("--cache-root", default=None,
                    help="parent of the fresh per-round cache dirs (default: the temp dir)")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--augment", action="store_true",
                    help="texts = Tang et al. augmentations (tasks.augment) of n/10 sentences")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")

    import ray
    import torch

    from orchestrator.config import PoolConfig
    from orchestrator.teacher_pool import TeacherPool

    texts = read_sst2(Path(args.data), args.n)
    if args.augment:
        texts = augmented(texts, args.n)
    print(f"{len(texts)} {'augmented ' if args.augment else ''}texts from {args.data}; teacher "
          f"{args.teacher}; {os.cpu_count()} cores; {args.repeats} interleaved rounds", flush=True)
    naive = None if args.skip_naive else NaiveProcess(args.teacher, args.max_length, texts)

    cpus = args.cpus_per_actor or args.num_cpus / args.num_actors
    cfg = PoolConfig(num_actors=args.num_actors, cpus_per_actor=cpus,
                     gpus_per_actor=args.gpus_per_actor,
                     token_budget=args.token_budget, max_batch_size=args.max_batch_size)
    times: dict[str, list[float]] = {"naive": [], "cold": [], "warm": []}
    for r in range(args.repeats):
        if naive is not None:  # Ray is down here: the naive loop has the machine to itself
            times["naive"].append(naive())
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        t0 = time.perf_counter()
        pool = TeacherPool(args.teacher, cfg, chunk_size=args.chunk_size)
        start_s = time.perf_counter() - t0
        if r == 0:
            print(f"pool: {cfg.num_actors} actor(s) x {cfg.cpus_per_actor:g} CPU "
                  f"({pool.info['threads']} torch threads and token budget "
                  f"{pool.info['token_budget']} each; naive pipeline: "
                  f"{torch.get_num_threads()} threads), started in {start_s:.1f}s (not timed; "
                  "Ray is started before and stopped after the pool's runs in every round)",
                  flush=True)
        try:
            # a fresh directory per round keeps every cold run cold
            root = tempfile.mkdtemp(prefix=f"distillray-bench-cache-{r}-", dir=args.cache_root)
            cold = pool.label_texts(texts, max_length=args.max_length,
                                    cache=pool.cache(root, max_length=args.max_length),
                                    progress=False)
            # warm: a new cache instance on the same directory, as another trial would
            warm = pool.label_texts(texts, max_length=args.max_length,
                                    cache=pool.cache(root, max_length=args.max_length),
                                    progress=False)
        finally:
            pool.shutdown()
            ray.shutdown()
        assert cold.misses == len(texts) and warm.hits == len(texts), (cold.misses, warm.hits)
        assert np.array_equal(cold.logits, warm.logits), "warm labels differ from cold labels"
        times["cold"].append(cold.seconds)
        times["warm"].append(warm.seconds)
        line = "  ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items() if v)
        print(f"round {r + 1}: {line} ({cold.truncated} truncated)", flush=True)
    if naive is not None:
        naive.close()
    med = {k: statistics.median(v) for k, v in times.items() if v}
    n = len(texts)
    print(f"\nmedians over {args.repeats} rounds:")
    for k, label in (("naive", "naive pipeline"), ("cold", "pool cold"), ("warm", "pool warm")):
        if k in med:
            print(f"  {label:<15} {med[k]:8.3f} s  {n / med[k]:10.1f} texts/s")
    if "naive" in med:
        per_round = [a / b for a, b in zip(times["naive"], times["cold"])]
        print(f"ratio pool cold / naive throughput: {med['naive'] / med['cold']:.2f}x "
              f"(per round: {', '.join(f'{x:.2f}' for x in per_round)}; target >= 3)")
    print(f"ratio warm / cold time: {med['warm'] / med['cold']:.4f} (target <= 0.02)")


if __name__ == "__main__":
    main()
