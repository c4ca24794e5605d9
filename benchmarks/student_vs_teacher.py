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

Latency: median of ``repeats`` timed forward passes under ``torch.inference_mode`` with a fixed
thread count, measured interleaved: every repeat times each model once, in an order rotated
per repeat, so machine noise hits all models alike. Parameters outside ``nn.Embedding`` tables
("non-embedding") are counted with :func:`students.factory.count_parameters` for all models.

``measure(models, ...)`` returns the table as a pandas DataFrame for reports to reuse.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ASSETS = Path(os.environ.get("DISTILLRAY_ASSETS", REPO.parent / "shared" / "assets"))
TEACHER_DIR = ASSETS / "models" / "minilm-l6-uncased"
WORD_VOCAB = 20_000
WORDPIECE_VOCAB = 30_522
BASE, TEACHER = "BERT-base", "MiniLM-L6 (teacher)"
TARGET_PARAMS, TARGET_LATENCY = 60.0, 15.0  # BiLSTM vs BERT-base: x fewer params, x faster (b=1)


@dataclass
class Bench:
    """A model and how to feed it: ``inputs(batch_size) -> kwargs`` for ``model(**kwargs)``."""

    model: nn.Module
    inputs: Callable[[int], dict]
    sizes: str = ""
    seq_len: int = 0
    extra: dict = field(default_factory=dict)


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


def _word_inputs(seq_len: int):
    def make(batch: int) -> dict:
        g = torch.Generator().manual_seed(batch)
        return {"ids_a": torch.randint(3, WORD_VOCAB, (batch, seq_len), generator=g)}
    return make


def _bert_inputs(seq_len: int, hf: bool):
    def make(batch: int) -> dict:
        g = torch.Generator().manual_seed(batch)
        ids = torch.randint(1000, WORDPIECE_VOCAB, (batch, seq_len), generator=g)
        ids[:, 0], ids[:, -1] = 101, 102
        types = torch.zeros_like(ids)
        if hf:
            return {"input_ids": ids, "token_type_ids": types, "attention_mask": torch.ones_like(ids)}
        return {"ids_a": ids, "token_type_ids": types}
    return make


def _hf_bert(config_kw: dict, pretrained: Path | None = None) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if pretrained is not None and (pretrained / "config.json").is_file():
        return BertForSequenceClassification.from_pretrained(str(pretrained), num_labels=2)
    return BertForSequenceClassification(BertConfig(num_labels=2, **config_kw))


def default_models(words: int, pieces: int, include: list[str] | None = None) -> dict[str, Bench]:
    """The standard line-up (see the module docstring), built in a fixed seed."""
    from students.bcn import BCNStudent
    from students.bilstm import BiLSTMStudent
    from students.transformer import TransformerStudent

    torch.manual_seed(0)
    heads = {"sst2": 2}
    makers: dict[str, Callable[[], Bench]] = {
        "BiLSTM (Tang)": lambda: Bench(
            BiLSTMStudent(WORD_VOCAB, 300, 150, 1, 200, heads), _word_inputs(words),
            "emb 300, BiLSTM 1x150/dir, ReLU 200", words),
        "BCN (MKD)": lambda: Bench(
            BCNStudent(WORD_VOCAB, 300, 150, heads), _word_inputs(words),
            "emb 300, hidden 150, max/mean/min/self pool", words),
        "Transformer-3L": lambda: Bench(
            TransformerStudent(WORDPIECE_VOCAB, 384, 3, 12, 1536, 512, 2, heads),
            _bert_inputs(pieces, hf=False), "3 x (384, 12 heads, ffn 1536)", pieces),
        TEACHER: lambda: Bench(
            _hf_bert(dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                          intermediate_size=1536), TEACHER_DIR),
            _bert_inputs(pieces, hf=True),
            "6 x (384, 12 heads, ffn 1536)" + ("" if (TEACHER_DIR / "config.json").is_file()
                                               else ", random weights"), pieces),
        BASE: lambda: Bench(_hf_bert({}), _bert_inputs(pieces, hf=True),
                            "12 x (768, 12 heads, ffn 3072)", pieces),
        "BERT-large": lambda: Bench(
            _hf_bert(dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                          intermediate_size=4096)),
            _bert_inputs(pieces, hf=True), "24 x (1024, 16 heads, ffn 4096)", pieces),
    }
    names = include or list(makers)
    unknown = [n for n in names if n not in makers]
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {list(makers)}")
    return {n: makers[n]() for n in names}


@torch.inference_mode()
def measure(models: dict[str, Bench], batch_sizes: tuple[int, ...] = (1, 64),
            repeats: int | dict[int, int] = 30, warmup: int = 2, threads: int | None = 1):
    """Median latency (ms) per model and batch size, interleaved (round-robin over models each
    repeat, order rotated), plus parameter counts. Returns a pandas DataFrame indexed by model."""
    import pandas as pd

    from students.factory import count_parameters

    prev = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        names = list(models)
        for b in models.values():
            b.model.eval()
        rows = {n: {"sizes": models[n].sizes, "seq_len": models[n].seq_len,
                    **{k: int(v) for k, v in count_parameters(models[n].model).items()}}
                for n in names}
        for bs in batch_sizes:
            reps = repeats.get(bs, 30) if isinstance(repeats, dict) else repeats
            inputs = {n: models[n].inputs(bs) for n in names}
            for n in names:
                for _ in range(warmup):
                    models[n].model(**inputs[n])
            times: dict[str, list[float]] = {n: [] for n in names}
            for r in range(reps):
                k = r % len(names)
                for n in names[k:] + names[:k]:
                    t0 = time.perf_counter()
                    models[n].model(**inputs[n])
                    times[n].append((time.perf_counter() - t0) * 1000)
            for n in names:
                rows[n][f"latency_b{bs}_ms"] = statistics.median(times[n])
                rows[n][f"repeats_b{bs}"] = reps
        df = pd.DataFrame.from_dict(rows, orient="index")
        df.index.name = "model"
        df = df.rename(columns={"total": "params"})
        return add_ratios(df, batch_sizes)
    finally:
        torch.set_num_threads(prev)


def add_ratios(df, batch_sizes=(1, 64)):
    """``x_fewer_params_vs_*`` and ``x_faster_b{bs}_vs_*`` against BERT-base and the teacher."""
    for ref, tag in ((BASE, "base"), (TEACHER, "teacher")):
        if ref not in df.index:
            continue
        df[f"x_fewer_params_vs_{tag}"] = df.loc[ref, "non_embedding"] / df["non_embedding"]
        for bs in batch_sizes:
            col = f"latency_b{bs}_ms"
            if col in df:
                df[f"x_faster_b{bs}_vs_{tag}"] = df.loc[ref, col] / df[col]
    return df


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
    models = default_models(words, pieces, args.models.split(",") if args.models else None)
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
