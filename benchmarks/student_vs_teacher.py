"""Students vs teachers on this CPU: non-embedding parameters and batch-1 / batch-64 latency.

    .venv/bin/python benchmarks/student_vs_teacher.py                       # the full table
    .venv/bin/python benchmarks/student_vs_teacher.py --repeats 30 --repeats-64 5 --threads 1

Models (random weights: latency and size do not depend on them; a single-sentence, 2-class head):

    BiLSTM (Tang)     Tang et al. 2019: 300-d embeddings, 1-layer BiLSTM with 150 units per
                      direction, ReLU layer of 200, classifier
    BCN (MKD)         300-d embeddings, hidden 150 (search_spaces/mkd.yaml), 4 poolings
    Transformer-3L    BERT layout, 3 layers, hidden 384, 12 heads, ffn 1536 (MiniLM-L6's widths)
    MiniLM-L6         the teacher (shared assets' minilm-l6-uncased weights, random when absent)
    BERT-base         transformers BertConfig() defaults: 12 layers, hidden 768
    BERT-large        24 layers, hidden 1024, 16 heads, ffn 4096

Inputs have SST-2's mean length: dev-set mean of the word tokenizer's tokens (word students)
and of the teacher tokenizer's wordpieces incl. [CLS]/[SEP] (Transformers), measured on the
shared assets' SST-2 dev.tsv when present (else 19 words / 23 wordpieces); every row of a batch
has that length (no padding). Word vocabulary 20,000 words; wordpiece vocabulary 30,522.

Latency and parameters: :func:`orchestrator.training.probe.measure` (medians of interleaved timed
passes with a fixed thread count; non-embedding parameters), which trials and the report use too.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from orchestrator.training.probe import BASE, default_models, measure  # noqa: E402

ASSETS = Path(os.environ.get("DISTILLRAY_ASSETS", REPO.parent / "shared" / "assets"))
TEACHER_DIR = ASSETS / "models" / "minilm-l6-uncased"
TARGET_PARAMS, TARGET_LATENCY = 60.0, 15.0  # BiLSTM vs BERT-base: x fewer params, x faster (b=1)


def sst2_lengths(n: int | None = None) -> tuple[int, int, str]:
    """Mean SST-2 dev length in words and in teacher wordpieces (+ [CLS], [SEP])."""
    path = ASSETS / "glue" / "SST-2" / "dev.tsv"
    if not path.is_file():
        return 19, 23, "defaults (no SST-2 dev.tsv)"
    from tasks.text import tokenize

    with open(path, newline="", encoding="utf-8") as f:
        texts = [r["sentence"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    texts = texts[:n] if n else texts
    words = statistics.mean(len(tokenize(t)) for t in texts)
    pieces = words + 2 + 3  # fallback estimate
    if (TEACHER_DIR / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(TEACHER_DIR))
        pieces = statistics.mean(len(x) for x in tok(texts)["input_ids"])
    return round(words), round(pieces), f"SST-2 dev mean over {len(texts)} sentences"


def format_table(df, batch_sizes=(1, 64)) -> str:
    lines = []
    head = f"{'model':<20} {'non-emb params':>15} {'seq':>4} " + " ".join(
        f"{f'b={bs} ms':>10}" for bs in batch_sizes)
    ratio_cols = [c for c in df.columns if c.startswith("x_")]
    short = {c: c.replace("x_fewer_params_vs_", "params/").replace("x_faster_", "")
             .replace("_vs_", "/") for c in ratio_cols}
    head += "  " + " ".join(f"{short[c]:>14}" for c in ratio_cols)
    lines.append(head)
    lines.append("-" * len(head))
    for name, r in df.iterrows():
        line = f"{name:<20} {int(r['non_embedding']):>15,} {int(r['seq_len']):>4} " + " ".join(
            f"{r[f'latency_b{bs}_ms']:>10.2f}" for bs in batch_sizes)
        line += "  " + " ".join(f"{r[c]:>13.1f}x" for c in ratio_cols)
        lines.append(line)
    lines.append("")
    lines.append("sizes: " + "; ".join(f"{n}: {r['sizes']}" for n, r in df.iterrows()))
    lines.append("ratios: BERT-base's (or the teacher's) value / the model's: x fewer non-embedding "
                 "params, x lower median latency")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=30, help="timed repeats at batch 1")
    ap.add_argument("--repeats-64", type=int, default=5, help="timed repeats at batch 64")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (fixed for all models)")
    ap.add_argument("--models", help="comma-separated subset of the line-up")
    ap.add_argument("--csv", help="also write the table here")
    args = ap.parse_args(argv)
    t0 = time.time()
    words, pieces, src = sst2_lengths()
    models = default_models(words, pieces, args.models.split(",") if args.models else None,
                            TEACHER_DIR)
    print(f"[bench] torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs "
          f"visible; lengths: {words} words / {pieces} wordpieces ({src}); repeats: "
          f"b=1 x{args.repeats}, b=64 x{args.repeats_64}, interleaved", flush=True)
    df = measure(models, (1, 64), {1: args.repeats, 64: args.repeats_64}, args.warmup, args.threads)
    print(format_table(df))
    if "BiLSTM (Tang)" in df.index and BASE in df.index:
        r = df.loc["BiLSTM (Tang)"]
        p, lat = r["x_fewer_params_vs_base"], r["x_faster_b1_vs_base"]
        print(f"\ntargets, BiLSTM vs BERT-base: non-embedding params {p:.0f}x fewer "
              f"(target >= {TARGET_PARAMS:.0f}x: {'met' if p >= TARGET_PARAMS else 'NOT met'}); "
              f"batch-1 latency {lat:.0f}x lower (target >= {TARGET_LATENCY:.0f}x: "
              f"{'met' if lat >= TARGET_LATENCY else 'NOT met'})")
    if args.csv:
        df.to_csv(args.csv)
    print(f"[bench] {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
