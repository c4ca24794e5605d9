"""The teacher's attention kernel when it labels: PyTorch's fused SDPA against Hugging Face's eager
attention (two matmuls and a softmax), in fp32 and in bf16.

One teacher worker (no Ray), the first ``--n`` SST-2 training sentences, labeled with the pool's
own batching (length-sorted batches of ``pool.token_budget`` padded tokens); every round labels
them once per kernel and precision, in rotating order, and the medians over ``--repeats`` rounds
are compared. The pool picks its kernel by :func:`teacher_pool.labeling_attention`; this forces
each in turn::

    .venv/bin/python benchmarks/teacher_attention.py --threads 2 --repeats 5

The last line printed is one JSON object: ``fp32_eager_vs_sdpa`` and ``bf16_eager_vs_sdpa``
(throughput ratios, > 1: eager faster), ``bf16_eager_vs_fp32_sdpa``, and each bf16 kernel's argmax
agreement and logit RMSE against fp32 SDPA.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.teacher_throughput import ASSETS, read_sst2  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default=str(ASSETS / "models" / "minilm-l6-uncased"),
                    help="teacher dir (the base model's untrained head is fine for speed)")
    ap.add_argument("--data", default=str(ASSETS / "glue" / "SST-2" / "train.tsv"))
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    import torch

    from orchestrator.config import PoolConfig
    from orchestrator.teachers import teacher_pool

    texts = read_sst2(Path(args.data), args.n)
    worker = teacher_pool.TeacherWorker(args.teacher, PoolConfig(
        precision="bf16", torch_threads=args.threads, cpus_per_actor=args.threads))
    torch.set_num_threads(args.threads)
    points = [(p, k) for p in ("fp32", "bf16") for k in ("sdpa", "eager")]
    chosen = teacher_pool.labeling_attention
    seconds: dict[tuple[str, str], list[float]] = {pt: [] for pt in points}
    logits: dict[tuple[str, str], np.ndarray] = {}
    try:
        for r in range(args.repeats + 1):  # round 0 warms up, untimed
            for precision, kernel in points[r % len(points):] + points[:r % len(points)]:
                teacher_pool.labeling_attention = lambda p, d, k=kernel: k
                t0 = time.perf_counter()
                out, _ = worker.label(texts, precision=precision)
                if r:
                    seconds[precision, kernel].append(time.perf_counter() - t0)
                logits[precision, kernel] = out
    finally:
        teacher_pool.labeling_attention = chosen
    med = {pt: statistics.median(v) for pt, v in seconds.items()}
    ref = logits["fp32", "sdpa"]
    result = {"n": len(texts), "threads": args.threads, "rounds": args.repeats,
              **{f"{p}_{k}_texts_per_s": round(len(texts) / med[p, k], 1) for p, k in points},
              "fp32_eager_vs_sdpa": round(med["fp32", "sdpa"] / med["fp32", "eager"], 4),
              "bf16_eager_vs_sdpa": round(med["bf16", "sdpa"] / med["bf16", "eager"], 4),
              "bf16_eager_vs_fp32_sdpa": round(med["fp32", "sdpa"] / med["bf16", "eager"], 4)}
    for k in ("sdpa", "eager"):
        low = logits["bf16", k]
        result[f"bf16_{k}_agreement"] = float((low.argmax(1) == ref.argmax(1)).mean())
        result[f"bf16_{k}_rmse"] = round(float(np.sqrt(((low - ref) ** 2).mean())), 6)
    print(f"machine: {os.cpu_count()} CPUs; teacher {args.teacher}")
    for p, k in points:
        print(f"  {p} {k:5s}: median {med[p, k]:.2f} s over {args.repeats} rounds, "
              f"{len(texts) / med[p, k]:.0f} texts/s")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
