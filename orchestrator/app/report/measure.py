"""Size and latency, all rows in one interleaved measurement."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from orchestrator.app.report.context import _Report
from orchestrator.app.report.rows import BERT_BASE, Cell, Row
from orchestrator.config import ExperimentConfig


class _StudentCall(nn.Module):
    """A saved student behind ``measure()``'s ``model(**inputs)`` call, for one task."""

    def __init__(self, model: nn.Module, task: str, wordpiece: bool):
        super().__init__()
        self.model, self.task, self.wordpiece = model, task, wordpiece

    def forward(self, ids_a, ids_b=None, token_type_ids=None):
        if self.wordpiece:
            return self.model(ids_a, None, self.task, token_type_ids=token_type_ids)
        return self.model(ids_a, ids_b, self.task)

    def non_embedding_parameters(self) -> int:
        from students.factory import count_parameters
        return count_parameters(self.model)["non_embedding"]


class _TeacherCall(nn.Module):
    def __init__(self, teacher, head: str):
        super().__init__()
        self.model = teacher.model
        self.teacher, self.head = teacher, head

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.teacher.logits(input_ids, attention_mask, token_type_ids, head=self.head)


def _ids(batch: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1000 + batch)
    low = min(5, max(1, vocab - 1))
    return torch.randint(low, max(low + 1, vocab), (batch, max(1, length)), generator=g)


def _reference_lengths(data, task: str, tokenizer, teacher_max: int, student_max: int):
    """Mean dev lengths of ``task``: words per text (student tokenizer), wordpieces of the
    (pair) input incl. special tokens (teacher tokenizer)."""
    from tasks.text import tokenize

    dev = next(iter(data[task].dev.values()))
    words_a = round(float(np.mean([min(len(tokenize(e.text_a)), student_max) for e in dev])))
    words_b = round(float(np.mean([min(len(tokenize(e.text_b)), student_max) for e in dev]))) \
        if dev and dev[0].text_b is not None else None
    enc = tokenizer([e.text_a for e in dev],
                    [e.text_b for e in dev] if words_b is not None else None,
                    truncation=True, max_length=teacher_max)
    pieces = round(float(np.mean([len(x) for x in enc["input_ids"]])))
    return words_a, words_b, pieces


def _measure(ctx: _Report, selected: list[Row], cells: list[Cell], tasks: list[str], data,
             single_refs, row_refs: dict, cfg: ExperimentConfig, repeats: tuple[int, int],
             warmup: int, threads: int | None) -> tuple[pd.DataFrame, str]:
    """Non-embedding params and median batch-1 / batch-64 latency per row (the reference
    task's model), BERT-base and the teacher among them; ratios vs both."""
    from orchestrator.record.registry import download_student
    from orchestrator.teachers.teacher_model import load_teacher
    from orchestrator.training.train import load_student

    from orchestrator.training import probe
    ref = tasks[0]
    teacher = load_teacher(single_refs[ref].path)
    words_a, words_b, pieces = _reference_lengths(data, ref, teacher.tokenizer,
                                                  cfg.teacher.max_length, cfg.student.max_length)
    benches: dict[str, Any] = {}
    tvocab = len(teacher.tokenizer)

    def hf_inputs(vocab: int):
        def make(b: int) -> dict:
            ids = _ids(b, pieces, vocab, 1)
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                    "token_type_ids": torch.zeros_like(ids)}
        return make

    benches["teacher"] = probe.Bench(_TeacherCall(teacher, ref), hf_inputs(tvocab),
                                     "fine-tuned teacher", pieces)
    with tempfile.TemporaryDirectory(prefix="distillray-report-") as tmp:
        for r in selected:
            if r.kind == "teacher":
                if r.id != "teacher" and row_refs.get(r.id):
                    mt = load_teacher(row_refs[r.id][ref].path)
                    benches[r.id] = probe.Bench(_TeacherCall(mt, ref), hf_inputs(len(mt.tokenizer)),
                                                r.label, pieces)
                continue
            cell = next((c for c in cells if c.row == r.id and c.task == ref), None)
            if cell is None or cell.train_run_id is None:
                continue
            dst = Path(tmp) / r.id
            dst.mkdir()
            try:
                model, info = load_student(download_student(ctx.client, cell.train_run_id, dst))
            except (OSError, LookupError, ValueError) as e:  # the row stays, without timings
                ctx.note(f"{r.num} {r.id}: student of run {cell.train_run_id} not measured: {e}")
                continue
            meta = info["meta"]
            wordpiece = meta["encoding"] == "wordpiece"
            vocab = int(meta["vocab_size"])
            if wordpiece:
                n = min(pieces, cfg.student.max_length)
                make = (lambda v, n: lambda b: {"ids_a": _ids(b, n, v, 2),
                                                "token_type_ids": torch.zeros((b, n), dtype=torch.long)}
                        )(vocab, n)
                seq = n
            else:
                pair = words_b is not None and getattr(model, "pair", True)
                make = (lambda v, pair: lambda b: {
                    "ids_a": _ids(b, words_a, v, 3),
                    **({"ids_b": _ids(b, words_b, v, 4)} if pair else {})})(vocab, pair)
                seq = words_a
            benches[r.id] = probe.Bench(_StudentCall(model, ref, wordpiece), make,
                                        info["student"]["arch"], seq)
        base = probe.default_models(words_a, pieces, include=[probe.BASE])[probe.BASE]
        benches[BERT_BASE] = base
        ctx.note(f"measuring {len(benches)} models on {ref} inputs "
                f"({words_a} words{f' + {words_b}' if words_b is not None else ''} / {pieces} "
                f"wordpieces), b=1 x{repeats[0]}, b=64 x{repeats[1]}, {threads} thread(s)")
        df = probe.measure(benches, (1, 64), {1: repeats[0], 64: repeats[1]}, warmup, threads)
    for ref_row, tag in (("teacher", "teacher"), (BERT_BASE, "bert_base")):
        df[f"x_fewer_params_vs_{tag}"] = df.loc[ref_row, "non_embedding"] / df["non_embedding"]
        for bs in (1, 64):
            df[f"x_faster_b{bs}_vs_{tag}"] = df.loc[ref_row, f"latency_b{bs}_ms"] / df[f"latency_b{bs}_ms"]
    note = (f"Size and CPU latency: each row's model for {ref} (MKD rows: the joint student); "
            f"non-embedding parameters (outside nn.Embedding tables); median of {repeats[0]} "
            f"(batch 1) / {repeats[1]} (batch 64) forward passes, interleaved across all rows "
            f"in this run, {threads} torch thread(s), inputs of the {ref} dev mean length "
            f"({words_a} words{f' + {words_b}' if words_b is not None else ''} for word "
            f"students, {pieces} wordpieces for Transformers). Ratios: the teacher's (row 1a) "
            f"or BERT-base's value / the row's (x fewer params, x faster). BERT-base: "
            f"transformers BertConfig() defaults (12 x 768), random weights, not trained.")
    return df, note
