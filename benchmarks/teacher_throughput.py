"""Teacher throughput: a naive ``transformers.pipeline`` loop vs the teacher pool, cold and warm.

Same teacher, same texts, one run::

    .venv/bin/python benchmarks/teacher_throughput.py --n 4000
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


def run_naive(teacher: str, texts: list[str], max_length: int) -> float:
    import torch
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    pipe = pipeline("text-classification", model=teacher, device=-1)
    pipe(texts[:2], truncation=True, max_length=max_length)  # warm-up, not timed
    t0 = time.perf_counter()
    out = pipe(texts, truncation=True, max_length=max_length)  # default batching
    seconds = time.perf_counter() - t0
    assert len(out) == len(texts)
    print(f"naive pipeline: {len(texts)} texts in {seconds:.2f}s = "
          f"{len(texts) / seconds:.1f} texts/s (torch threads {torch.get_num_threads()})",
          flush=True)
    return seconds


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default=str(ASSETS / "models" / "minilm-l6-uncased"))
    ap.add_argument("--data", default=str(ASSETS / "glue" / "SST-2" / "train.tsv"))
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--num-cpus", type=float, default=os.cpu_count(),
                    help="CPUs Ray may use (default: all cores)")
    ap.add_argument("--num-actors", type=int, default=1)
    ap.add_argument("--cpus-per-actor", type=float, default=None,
                    help="default: num-cpus / num-actors")
    ap.add_argument("--gpus-per-actor", type=float, default=0.0,
                    help="> 0: actors on GPU (half precision), e.g. 1 (untested here: no GPU)")
    ap.add_argument("--token-budget", type=int, default=8192)
    ap.add_argument("--max-batch-size", type=int, default=256)
    ap.add_argument("--chunk-size", type=int, default=512)
    ap.add_argument("--cache-root", default=None, help="default: a fresh temp dir")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--augment", action="store_true",
                    help="texts = Tang et al. augmentations (tasks.augment) of n/10 sentences")
    args = ap.parse_args(argv)

    import ray

    from orchestrator.config import PoolConfig
    from orchestrator.teacher_pool import TeacherPool

    texts = read_sst2(Path(args.data), args.n)
    if args.augment:
        texts = augmented(texts, args.n)
    print(f"{len(texts)} {'augmented ' if args.augment else ''}texts from {args.data}; teacher {args.teacher}; "
          f"{os.cpu_count()} cores", flush=True)
    naive_s = None if args.skip_naive else run_naive(args.teacher, texts, args.max_length)

    cpus = args.cpus_per_actor or args.num_cpus / args.num_actors
    cfg = PoolConfig(num_actors=args.num_actors, cpus_per_actor=cpus,
                     gpus_per_actor=args.gpus_per_actor,
                     token_budget=args.token_budget, max_batch_size=args.max_batch_size)
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    cache_root = args.cache_root or tempfile.mkdtemp(prefix="distillray-bench-cache-")
    t0 = time.perf_counter()
    pool = TeacherPool(args.teacher, cfg, chunk_size=args.chunk_size)
    start_s = time.perf_counter() - t0
    print(f"pool: {cfg.num_actors} actor(s) x {cfg.cpus_per_actor:g} CPU "
          f"({pool.info['threads']} torch threads each), started in {start_s:.1f}s", flush=True)
    try:
        cold = pool.label_texts(texts, max_length=args.max_length,
                                cache=pool.cache(cache_root, max_length=args.max_length),
                                progress=False)
        print(f"pool cold: {len(texts)} texts in {cold.seconds:.2f}s = "
              f"{cold.texts_per_second:.1f} texts/s ({cold.computed} computed, "
              f"{cold.truncated} truncated)", flush=True)
        warm = pool.label_texts(texts, max_length=args.max_length,
                                cache=pool.cache(cache_root, max_length=args.max_length),
                                progress=False)
        print(f"pool warm: {len(texts)} texts in {warm.seconds:.3f}s = "
              f"{warm.texts_per_second:.1f} texts/s ({warm.hits} hits, {warm.misses} misses)",
              flush=True)
        assert np.array_equal(cold.logits, warm.logits), "warm labels differ from cold labels"
    finally:
        pool.shutdown()
        ray.shutdown()
    if naive_s is not None:
        print(f"ratio pool cold / naive throughput: {naive_s / cold.seconds:.2f}x")
        print(f"ratio pool warm / naive throughput: {naive_s / warm.seconds:.1f}x")
    print(f"ratio warm / cold time: {warm.seconds / cold.seconds:.4f} "
          f"(warm is {cold.seconds / warm.seconds:.0f}x faster)")


if __name__ == "__main__":
    main()
