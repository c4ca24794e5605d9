"""Latency and size, measured one way everywhere: a trial's student, the report's rows and the
benchmarks all go through :func:`measure`.

Latency is the median of timed forward passes under ``torch.inference_mode`` with a fixed thread
count. Several models are measured interleaved: every repeat times each model once, in an order
rotated per repeat, so machine noise hits all of them alike. Parameters outside ``nn.Embedding``
tables ("non-embedding") are counted with :func:`students.factory.count_parameters`.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

WORD_VOCAB = 20_000
WORDPIECE_VOCAB = 30_522
BASE, TEACHER = "BERT-base", "MiniLM-L6 (teacher)"


@dataclass
class Bench:
    """A model and how to feed it: ``inputs(batch_size) -> kwargs`` for ``model(**kwargs)``."""

    model: nn.Module
    inputs: Callable[[int], dict]
    sizes: str = ""
    seq_len: int = 0
    extra: dict = field(default_factory=dict)


def word_inputs(seq_len: int):
    def make(batch: int) -> dict:
        g = torch.Generator().manual_seed(batch)
        return {"ids_a": torch.randint(3, WORD_VOCAB, (batch, seq_len), generator=g)}
    return make


def bert_inputs(seq_len: int, hf: bool):
    def make(batch: int) -> dict:
        g = torch.Generator().manual_seed(batch)
        ids = torch.randint(1000, WORDPIECE_VOCAB, (batch, seq_len), generator=g)
        ids[:, 0], ids[:, -1] = 101, 102
        types = torch.zeros_like(ids)
        if hf:
            return {"input_ids": ids, "token_type_ids": types, "attention_mask": torch.ones_like(ids)}
        return {"ids_a": ids, "token_type_ids": types}
    return make


def hf_bert(config_kw: dict, pretrained: Path | None = None) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if pretrained is not None and (pretrained / "config.json").is_file():
        return BertForSequenceClassification.from_pretrained(str(pretrained), num_labels=2)
    return BertForSequenceClassification(BertConfig(num_labels=2, **config_kw))


def default_models(words: int, pieces: int, include: list[str] | None = None,
                   teacher_dir: Path | None = None) -> dict[str, Bench]:
    """The standard line-up, built in a fixed seed (random weights: latency and size do not
    depend on them; a single-sentence, 2-class head): the Tang BiLSTM (300-d embeddings, 150
    units per direction, ReLU 200), the MKD BCN (hidden 150), a 3-layer Transformer at MiniLM-L6's
    widths, the MiniLM-L6 teacher (``teacher_dir``'s weights when given), BERT-base and
    BERT-large."""
    from students.bcn import BCNStudent
    from students.bilstm import BiLSTMStudent
    from students.transformer import TransformerStudent

    torch.manual_seed(0)
    heads = {"sst2": 2}
    makers: dict[str, Callable[[], Bench]] = {
        "BiLSTM (Tang)": lambda: Bench(
            BiLSTMStudent(WORD_VOCAB, 300, 150, 1, 200, heads), word_inputs(words),
            "emb 300, BiLSTM 1x150/dir, ReLU 200", words),
        "BCN (MKD)": lambda: Bench(
            BCNStudent(WORD_VOCAB, 300, 150, heads), word_inputs(words),
            "emb 300, hidden 150, max/mean/min/self pool", words),
        "Transformer-3L": lambda: Bench(
            TransformerStudent(WORDPIECE_VOCAB, 384, 3, 12, 1536, 512, 2, heads),
            bert_inputs(pieces, hf=False), "3 x (384, 12 heads, ffn 1536)", pieces),
        TEACHER: lambda: Bench(
            hf_bert(dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                          intermediate_size=1536), teacher_dir),
            bert_inputs(pieces, hf=True),
            "6 x (384, 12 heads, ffn 1536)"
            + ("" if (teacher_dir is not None and (teacher_dir / "config.json").is_file())
               else ", random weights"), pieces),
        BASE: lambda: Bench(hf_bert({}), bert_inputs(pieces, hf=True),
                            "12 x (768, 12 heads, ffn 3072)", pieces),
        "BERT-large": lambda: Bench(
            hf_bert(dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                          intermediate_size=4096)),
            bert_inputs(pieces, hf=True), "24 x (1024, 16 heads, ffn 4096)", pieces),
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


@torch.inference_mode()
def student_latency_ms(model: nn.Module, batch_size: int, seq_len: int, pair: bool,
                       vocab_size: int, task: str | None = None, repeats: int = 30,
                       threads: int | None = 1) -> float:
    """Median forward latency of a student on random token ids (latency does not depend on
    weights)."""
    def inputs(b: int) -> dict:
        g = torch.Generator().manual_seed(0)
        ids = lambda: torch.randint(3, max(4, vocab_size), (b, seq_len), generator=g)  # noqa: E731
        return {"ids_a": ids(), "ids_b": ids() if pair else None, "task": task}

    df = measure({"student": Bench(model, inputs)}, (batch_size,), repeats, warmup=3,
                 threads=threads)
    return float(df.loc["student", f"latency_b{batch_size}_ms"])
