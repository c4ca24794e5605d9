"""MKD teacher stage: refine one encoder on several tasks at once, a head per task.

Liu et al. (2019) distill from a *multi-task* teacher: a pre-trained encoder shared by every task,
with a classification or regression head per task, trained on a mixture of the tasks' batches
(each batch from one task, drawn in proportion to the tasks' sizes, or to size **
``teacher.mixture_tau``). The result is saved in the multi-task teacher format of
:mod:`orchestrator.teachers.teacher_model` (HF encoder dir +
``heads.safetensors`` + ``distillray_heads.json``) under ``<work_root>/teachers/<key>/``, where
the key hashes the base model, the task list, each task's training data and the settings; a second
call with the same inputs reuses it. The teacher pool serves each head by task name.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from orchestrator.config import MULTITASK_ENTRY, TeacherConfig
from orchestrator.runtime.keys import atomic_dir, content_key
from orchestrator.runtime.precision import autocast
from orchestrator.stages.teacher import (FinetuneRun, TeacherResult, _check_base_model, _encode,
                                         evaluate_teacher, random_base, shuffled_batches,
                                         training_precision, training_settings,
                                         write_train_records)
from orchestrator.teachers.teacher_model import (MultiTaskTeacher, TeacherError,
                                                 base_model_identity, save_multitask_teacher)
from orchestrator.training.mixture import TaskSampler, mixture_weights
from tasks.data import TaskData
from tasks.loaders import data_fingerprint, take_subset

MULTITASK_TEACHER_VERSION = 1


def multitask_teacher_key(cfg: TeacherConfig, data: dict[str, TaskData]) -> str:
    """Content key: base model, tasks (names, label sets, training data) and settings (the
    shared ones under ``teacher.per_task.multitask``)."""
    cfg = cfg.for_task(MULTITASK_ENTRY)
    settings = training_settings(cfg)
    if cfg.mixture_tau != 1.0:  # absent when proportional: teachers refined before stay valid
        settings["mixture_tau"] = cfg.mixture_tau
    return content_key({
        "v": MULTITASK_TEACHER_VERSION, "kind": "multitask",
        "model": base_model_identity(cfg.model),
        "tasks": {t: {"outputs": d.task.num_outputs, "pair": d.task.is_pair,
                      "data": data_fingerprint(d.train)} for t, d in sorted(data.items())},
        "cfg": settings})


def refine_multitask_teacher(cfg: TeacherConfig, data: dict[str, TaskData],
                             work_root: str | Path, log: Callable = print) -> TeacherResult:
    """Refine (or reuse) a multi-task teacher on every task of ``data``.

    ``metrics`` holds ``<task>_<metric>`` for each task's first dev split (and ``<task>_score``)
    plus ``score``, the mean of the task scores."""
    t0 = time.time()
    if not data:
        raise TeacherError("a multi-task teacher needs at least one task")
    key = multitask_teacher_key(cfg, data)
    cfg = cfg.for_task(MULTITASK_ENTRY)
    final = Path(work_root) / "teachers" / key
    if (final / "metrics.json").is_file():
        metrics = json.loads((final / "metrics.json").read_text())
        log(f"[teacher] reusing multi-task teacher {final} (mean dev score "
            f"{metrics.get('score', float('nan')):.4f})")
        return TeacherResult(final, key, metrics, True, time.time() - t0)
    _check_base_model(cfg.model)
    partial = final.parent / ".partial" / key  # the checkpoint; scratch for a random base
    partial.mkdir(parents=True, exist_ok=True)
    encoder, tokenizer = _init_encoder(cfg, data, partial)
    model = MultiTaskTeacher(encoder, {t: d.task.num_outputs for t, d in data.items()})
    train = {t: take_subset(d.train, cfg.max_train_examples, cfg.seed) for t, d in data.items()}
    log(f"[teacher] refining {cfg.model} on {', '.join(f'{t} ({len(x)})' for t, x in train.items())}: "
        f"{cfg.epochs} epochs, batch {cfg.batch_size}, max_length {cfg.max_length}")
    precision = training_precision(cfg)
    plan, steps_per_epoch = mixture_plan(train, cfg)
    run = FinetuneRun(partial, cfg, len(plan), steps_per_epoch, "multi-task teacher", log)
    info = run.fit(model, plan, _mixture_step(tokenizer, train, data, cfg, precision),
                   lambda m: evaluate_multitask(m, tokenizer, data, cfg.max_length, precision))
    metrics = evaluate_multitask(model, tokenizer, data, cfg.max_length, precision)
    log("[teacher] dev: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                                       if k.endswith("_score") or k == "score"))
    # written in one go once trained: a kill during training leaves the checkpoint only
    with atomic_dir(final) as tmp:
        save_multitask_teacher(model, tokenizer, tmp)
        (tmp / "teacher_config.json").write_text(json.dumps(
            {"base_model": cfg.model, "tasks": list(data), "multitask": True,
             "config": asdict(cfg)}, indent=1))
        write_train_records(tmp, info)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1))  # written last
    run.discard()
    return TeacherResult(final, key, metrics, False, time.time() - t0)


def _init_encoder(cfg: TeacherConfig, data: dict[str, TaskData], tmp: Path):
    """The shared encoder (with BERT's pooler) and its tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(cfg.seed)
    if cfg.model.startswith("random:"):
        src = random_base(cfg, [e for d in data.values() for e in d.train], tmp)
        encoder = AutoModel.from_pretrained(str(src))
        tokenizer = AutoTokenizer.from_pretrained(str(src))
        shutil.rmtree(src)
        return encoder, tokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.model)
        encoder = AutoModel.from_pretrained(cfg.model)
    except OSError as e:
        raise TeacherError(f"cannot load teacher model {cfg.model!r}: {e}. Offline? Point "
                           "teacher.model at a local HF directory") from None
    except (ValueError, KeyError) as e:
        raise TeacherError(f"{cfg.model!r} is not an encoder model: {e}") from None
    if not hasattr(encoder.config, "hidden_size"):
        raise TeacherError(f"{cfg.model!r} has no hidden_size: not an encoder for task heads")
    return encoder, tokenizer


def mixture_plan(train: dict[str, list], cfg: TeacherConfig) -> tuple[list, int]:
    """Every step's (task, batch indices), fixed by the seed: each step draws a task (with
    probability proportional to its size ** ``cfg.mixture_tau``) and takes the next of its
    length-grouped batches. Returns the plan and the steps of one epoch (every task's batches
    once, on average; with ``mixture_tau`` < 1 the small tasks' more than once)."""
    rng = random.Random(cfg.seed)
    sizes = {t: len(x) for t, x in train.items()}
    empty = [t for t, n in sizes.items() if n == 0]
    if empty:
        raise TeacherError(f"task(s) {', '.join(empty)} have no training examples")
    sampler = TaskSampler(mixture_weights(sizes, "temperature", cfg.mixture_tau), seed=cfg.seed)
    steps_per_epoch = sum(math.ceil(n / cfg.batch_size) for n in sizes.values())
    total = max(1, int(round(steps_per_epoch * cfg.epochs)))
    queues: dict[str, list[list[int]]] = {t: [] for t in train}
    plan = []
    for task in sampler.draw(total):
        if not queues[task]:
            lengths = [len(e.text_a) + len(e.text_b or "") for e in train[task]]
            queues[task] = shuffled_batches(lengths, cfg.batch_size, rng)
        plan.append((task, queues[task].pop()))
    return plan, steps_per_epoch


def _mixture_step(tokenizer, train: dict, data: dict[str, TaskData], cfg: TeacherConfig,
                  precision: str):
    def step(model: MultiTaskTeacher, item) -> torch.Tensor:
        task, idx = item
        batch = [train[task][i] for i in idx]
        enc = _encode(tokenizer, batch, cfg.max_length)
        with autocast(precision, "cpu"):
            out = model(**enc, head=task)
        out = out.float()
        if data[task].task.is_regression:
            return F.mse_loss(out.squeeze(-1), torch.tensor([float(e.label) for e in batch]))
        return F.cross_entropy(out, torch.tensor([int(e.label) for e in batch]))
    return step


def evaluate_multitask(model: MultiTaskTeacher, tokenizer, data: dict[str, TaskData],
                       max_length: int, precision: str = "fp32") -> dict[str, float]:
    """Each task's metrics on its first dev split, through its own head; ``score`` = their mean."""
    out: dict[str, float] = {}
    scores = []
    for t, d in data.items():
        dev = next(iter(d.dev.values()))
        m = evaluate_teacher(model, tokenizer, dev, d.task, max_length, head=t,
                             precision=precision)
        out.update({f"{t}_{k}": float(v) for k, v in m.items()})
        scores.append(float(m["score"]))
    out["score"] = float(sum(scores) / len(scores))
    return out
