"""Augmentation throughput: sentences/s inline (1 worker) and on a Ray pool, measured in one run.

    .venv/bin/python benchmarks/augment.py --n 5000 --workers 2

Reads SST-2 train from the shared assets (``--tsv``), augments the first ``--n`` sentences with
the default Tang et al. settings, once inline and once over ``--workers`` Ray tasks, each into a
fresh folder (no cache reuse), and prints both rates and their ratio. Both modes are warmed up
first on a small slice (tagger loaded; Ray workers started), so the figures compare steady
states; ``ray.init`` and the cold first call are reported separately.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from orchestrator.config import AugmentConfig, find_assets  # noqa: E402
from orchestrator.stages.augment_stage import augment_dataset  # noqa: E402
from tasks.data import Example  # noqa: E402


def read_sst2(path: Path, n: int) -> list[Example]:
    out: list[Example] = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        if header[:2] != ["sentence", "label"]:
            raise SystemExit(f"{path}: expected header 'sentence<TAB>label', got {header}")
        for i, row in enumerate(reader):
            if i >= n:
                break
            out.append(Example(i, row[0], None, int(row[1])))
    return out


def labeling_seconds(teacher: str, texts: Sequence[str], max_length: int = 64) -> float:
    """Seconds a teacher pool (1 actor, 2 threads, no cache) takes to label ``texts``."""
    from orchestrator.config import PoolConfig
    from orchestrator.teachers.teacher_pool import TeacherPool

    with TeacherPool(teacher, PoolConfig(num_actors=1, cpus_per_actor=1.0, torch_threads=2)) as pool:
        pool.label_texts(list(texts[:64]), max_length=max_length, progress=False)  # warm-up
        t0 = time.perf_counter()
        pool.label_texts(list(texts), max_length=max_length, progress=False)
        return time.perf_counter() - t0


def run(examples: list[Example], cfg: AugmentConfig, root: Path, tag: str) -> tuple[float, object]:
    out = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=root))
    t0 = time.perf_counter()
    res = augment_dataset(examples, cfg, out, data_key=f"bench-{tag}", progress=False)
    return time.perf_counter() - t0, res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="SST-2 sentences to augment")
    ap.add_argument("--workers", type=int, default=2, help="Ray tasks at once")
    ap.add_argument("--chunk-size", type=int, default=None,
                    help="examples per Ray task (default: n / (4 * workers))")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per mode (median)")
    ap.add_argument("--tsv", default=None, help="SST-2 train.tsv (default: shared assets)")
    ap.add_argument("--nltk-data", default=None, help="NLTK data dir (default: shared assets)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--teacher", default=None, help="teacher dir whose labeling time is compared "
                    "(default: the shared MiniLM; its head is untrained, which costs the same)")
    ap.add_argument("--no-label", action="store_true", help="skip the labeling comparison")
    args = ap.parse_args(argv)

    assets = find_assets()
    tsv = Path(args.tsv) if args.tsv else (assets / "glue" / "SST-2" / "train.tsv" if assets else None)
    if tsv is None or not tsv.is_file():
        raise SystemExit("SST-2 train.tsv not found: pass --tsv or set $DISTILLRAY_ASSETS")
    nltk_data = args.nltk_data or (str(assets / "nltk_data") if assets else None)
    examples = read_sst2(tsv, args.n)
    chunk = args.chunk_size or max(1, -(-len(examples) // (4 * args.workers)))
    base = AugmentConfig(enabled=True, nltk_data=nltk_data, seed=args.seed)
    inline_cfg = AugmentConfig(**{**vars(base), "num_workers": 1, "chunk_size": max(1, len(examples))})
    pool_cfg = AugmentConfig(**{**vars(base), "num_workers": args.workers, "chunk_size": chunk})
    print(f"SST-2: {len(examples)} sentences from {tsv}; p_mask={base.p_mask} p_pos={base.p_pos} "
          f"p_ng={base.p_ng} n_iter=20; pool: {args.workers} workers, chunk {chunk}")

    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=max(args.workers, 1), include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        warm = examples[: min(len(examples), 8 * args.workers)]
        cold_inline, _ = run(warm, AugmentConfig(**{**vars(inline_cfg), "chunk_size": len(warm)}),
                             root, "warm1")
        cold_pool, _ = run(warm, AugmentConfig(**{**vars(pool_cfg), "chunk_size": 8}), root,
                           "warm2")
        t_inline, t_pool = [], []
        res = None
        for _ in range(args.repeat):
            s, res = run(examples, inline_cfg, root, "inline")
            t_inline.append(s)
            s, res_pool = run(examples, pool_cfg, root, "pool")
            t_pool.append(s)
            same = res.path.read_bytes() == res_pool.path.read_bytes()
        lab = None
        teacher = args.teacher or (str(assets / "models" / "minilm-l6-uncased") if assets else None)
        if teacher and not args.no_label:
            import pyarrow.parquet as pq
            texts = pq.read_table(res.path, columns=["text_a"]).column("text_a").to_pylist()
            lab = labeling_seconds(teacher, texts)
    ray.shutdown()

    si, sp = statistics.median(t_inline), statistics.median(t_pool)
    n = len(examples)
    print(f"ray.init: {init_s:.2f} s; warm-up ({len(warm)} sentences): inline {cold_inline:.2f} s, "
          f"pool {cold_pool:.2f} s")
    print(f"rows written: {res.n_out} ({res.n_out / n:.1f} per sentence); "
          f"mask {res.stats['mask_share']:.3f}, swap {res.stats['swap_share']:.3f}, "
          f"n-gram {res.stats['ngram_share']:.3f}; identical output: {same}")
    print(f"1 worker (inline): {si:.2f} s  -> {n / si:,.0f} sentences/s")
    print(f"Ray pool ({args.workers} workers): {sp:.2f} s  -> {n / sp:,.0f} sentences/s")
    print(f"speed-up pool / inline: {si / sp:.2f}x")
    if lab is not None:
        print(f"teacher labeling of the same {res.n_out} rows: {lab:.2f} s "
              f"({res.n_out / lab:,.0f} texts/s)")
        print(f"augmentation time / labeling time: inline {si / lab:.1%}, pool {sp / lab:.1%} "
              "(target <= 10%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
