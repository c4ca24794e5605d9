"""Students vs teachers and ELMo on this CPU: non-embedding parameters, batch-1 / batch-64 latency.

    .venv/bin/python benchmarks/student_vs_teacher.py                       # the full table
    .venv/bin/python benchmarks/student_vs_teacher.py --repeats 30 --repeats-64 5 --threads 1
    .venv/bin/python benchmarks/student_vs_teacher.py --batch-sizes 1,32 --repeats-batch 10

Models (random weights: latency and size do not depend on them; a single-sentence, 2-class head):

    BiLSTM (Tang)     Tang et al. 2019: 300-d embeddings, 1-layer BiLSTM with 150 units per
                      direction, ReLU layer of 200, classifier
    BCN (MKD)         300-d embeddings, hidden 150 (search_spaces/mkd.yaml), 4 poolings
    Transformer-3L    BERT layout, 3 layers, hidden 384, 12 heads, ffn 1536 (MiniLM-L6's widths)
    MiniLM-L6         the teacher (shared assets' minilm-l6-uncased weights, random when absent)
    BERT-base         transformers BertConfig() defaults: 12 layers, hidden 768
    BERT-large        24 layers, hidden 1024, 16 heads, ffn 4096
    ELMo (shape)      ELMo's encoder (benchmarks/elmo_shape.py): char CNN (16-d embeddings of 262
                      chars, 2048 filters, 2 highway layers, projection to 512), forward and
                      backward LMs of 2 LSTM layers with 4096 cells projected to 512, residual;
                      scalar mix, mean pool, classifier. Its 262 x 16 character table is its only
                      nn.Embedding, so the char CNN counts as non-embedding parameters.

Inputs have SST-2's mean length: dev-set mean of the word tokenizer's tokens (word students)
and of the teacher tokenizer's wordpieces incl. [CLS]/[SEP] (Transformers), measured on the
shared assets' SST-2 dev.tsv when present (else 19 words / 23 wordpieces); every row of a batch
has that length (no padding). Word vocabulary 20,000 words; wordpiece vocabulary 30,522. ELMo
reads the words plus its <S> and </S> tokens, each word padded to 50 characters as ELMo pads.

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

sys.path.append(str(Path(__file__).resolve().parent))  # for elmo_shape, also when loaded by path

from elmo_shape import ElmoShaped, char_inputs  # noqa: E402
from orchestrator.training.probe import BASE, Bench, default_models, measure  # noqa: E402

ASSETS = Path(os.environ.get("DISTILLRAY_ASSETS", REPO.parent / "shared" / "assets"))
TEACHER_DIR = ASSETS / "models" / "minilm-l6-uncased"
TARGET_PARAMS, TARGET_LATENCY = 60.0, 15.0  # BiLSTM vs BERT-base: x fewer params, x faster (b=1)
BILSTM, ELMO = "BiLSTM (Tang)", "ELMo (shape)"
# the thesis's claim, BiLSTM vs ELMo (Tang et al. 2019 and Liu et al. 2019, the MKD paper): from
# 60x to 100x fewer parameters, from 8x to 15x less inference time
CLAIM_PARAMS, CLAIM_LATENCY = (60.0, 100.0), (8.0, 15.0)


def elmo_bench(words: int) -> Bench:
    torch.manual_seed(0)
    return Bench(ElmoShaped(num_labels=2), char_inputs(words),
                 "char CNN 2048 (262x16 chars, 50/word), 2 highway, proj 512; "
                 "2 x LSTM 4096 cells/dir proj 512, residual; mix, mean, linear", words + 2)


def line_up(words: int, pieces: int, include: list[str] | None = None) -> dict[str, Bench]:
    """probe's standard line-up plus the ELMo-shaped model, in ``include``'s order if given."""
    rest = [n for n in include if n != ELMO] if include else None
    try:
        models = default_models(words, pieces, rest, TEACHER_DIR) if rest != [] else {}
    except ValueError as e:  # an unknown name: ELMo is a choice too
        raise ValueError(f"{e} or {ELMO!r}") from None
    if include is None or ELMO in include:
        models[ELMO] = elmo_bench(words)
    return {n: models[n] for n in include} if include else models


def add_elmo_ratios(df, batch_sizes=(1, 64)):
    """``x_fewer_params_vs_elmo`` and ``x_faster_b{bs}_vs_elmo``: ELMo's value / the model's."""
    if ELMO not in df.index:
        return df
    df["x_fewer_params_vs_elmo"] = df.loc[ELMO, "non_embedding"] / df["non_embedding"]
    for bs in batch_sizes:
        df[f"x_faster_b{bs}_vs_elmo"] = df.loc[ELMO, f"latency_b{bs}_ms"] / df[f"latency_b{bs}_ms"]
    return df


def elmo_summary(df, model, batch_sizes=(1, 64)) -> str:
    """The BiLSTM against ELMo beside the thesis's claim, and how ELMo's parameters split."""
    parts = model.parameter_breakdown()
    lines = [f"ELMo (shape) parameters: {parts['elmo']:,} for ELMo itself (published: 93.6M) = "
             f"char table {parts['char_embedding']:,} (an nn.Embedding, not counted below) + "
             f"char CNN, highway and projection {parts['char_cnn']:,} + biLSTM "
             f"{parts['bilstm']:,}; "
             f"mix and classifier {parts['head']:,}; non-embedding "
             f"{int(df.loc[ELMO, 'non_embedding']):,}"]
    if BILSTM in df.index:
        r = df.loc[BILSTM]
        lat = ", ".join(f"b={bs} {r[f'x_faster_b{bs}_vs_elmo']:.1f}x" for bs in batch_sizes)
        no_cnn = int(df.loc[ELMO, "non_embedding"]) - parts["char_cnn"]
        lines.append(
            f"BiLSTM vs ELMo: non-embedding params {r['x_fewer_params_vs_elmo']:.0f}x fewer "
            f"({no_cnn / r['non_embedding']:.0f}x with ELMo's char CNN left out); lower median "
            f"latency {lat} (the thesis: {CLAIM_PARAMS[0]:.0f}-{CLAIM_PARAMS[1]:.0f}x fewer "
            f"params, {CLAIM_LATENCY[0]:.0f}-{CLAIM_LATENCY[1]:.0f}x less inference time)")
    return "\n".join(lines)


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
    lines.append("ratios: BERT-base's (or the teacher's, or ELMo's) value / the model's: x fewer "
                 "non-embedding params, x lower median latency")
    return "\n".join(lines)


def batch_sizes(text: str) -> tuple[int, ...]:
    """``"1,32"`` -> ``(1, 32)``; an argparse type, so a bad value is a usage error."""
    try:
        sizes = tuple(int(x) for x in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(bs < 1 for bs in sizes) or len(set(sizes)) != len(sizes):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give distinct positive integers separated by commas, e.g. 1,32")
    return sizes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-sizes", type=batch_sizes, default=(1, 64),
                    help="comma-separated batch sizes (default 1,64)")
    ap.add_argument("--repeats", type=int, default=30, help="timed repeats at batch 1")
    ap.add_argument("--repeats-batch", "--repeats-64", dest="repeats_batch", type=int, default=5,
                    help="timed repeats at each batch size above 1")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (fixed for all models)")
    ap.add_argument("--models", help="comma-separated subset of the line-up")
    ap.add_argument("--csv", help="also write the table here")
    args = ap.parse_args(argv)
    t0 = time.time()
    words, pieces, src = sst2_lengths()
    try:
        models = line_up(words, pieces, args.models.split(",") if args.models else None)
    except ValueError as e:
        ap.error(f"--models: {e}")
    sizes = args.batch_sizes
    repeats = {bs: args.repeats if bs == 1 else args.repeats_batch for bs in sizes}
    print(f"[bench] torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs "
          f"visible; lengths: {words} words / {pieces} wordpieces ({src}); repeats: "
          + ", ".join(f"b={bs} x{n}" for bs, n in repeats.items()) + ", interleaved", flush=True)
    df = add_elmo_ratios(measure(models, sizes, repeats, args.warmup, args.threads), sizes)
    print(format_table(df, sizes))
    if ELMO in models:
        print("\n" + elmo_summary(df, models[ELMO].model, sizes))
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
