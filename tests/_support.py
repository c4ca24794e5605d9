"""Helpers that more than one test file uses: plain functions, classes and recorded data (pytest
fixtures live in conftest.py). Not a test file: pytest collects nothing here, and no test file
imports another.

- tiny students: ``generated`` texts of a generated task, ``make_student`` (a random-weight
  student saved as training saves one);
- the worker loop's inputs: ``random_bundle`` (a training bundle of random rows) and
  ``tiny_config`` (a one-process BiLSTM run);
- early stopping replayed without Tune: ``replay`` feeds recorded curves to a scheduler,
  ``Recorder`` is a searcher that records what it is told, ``TANG_ALONE`` the tang search's
  eight configurations, each run alone to the end.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from ray.tune.search import Searcher

from orchestrator.config import ExperimentConfig, StudentConfig, build_config
from orchestrator.stages.pipeline import _spec_dict
from orchestrator.training.bundle import write_split
from orchestrator.training.train import build_from_meta, save_student
from tasks.generated import generate_examples
from tasks.registry import get_task
from tasks.vocab import Vocab

# ---------------------------------------------------------------------------------------------
# tiny students

TINY = {"bilstm": dict(embed_dim=12, hidden_size=10, relu_size=14, num_layers=2),
        "bcn": dict(embed_dim=12, hidden_size=8),
        "transformer": dict(tf_hidden=16, tf_layers=2, tf_heads=2, tf_ffn=32, max_length=24)}


def generated(task: str, n: int = 12, seed: int = 0) -> list[tuple[str, str | None]]:
    ex = generate_examples(get_task(task), n, random.Random(seed))
    return [(e.text_a, e.text_b) for e in ex]


def make_student(tmp: Path, arch: str, tasks: list[str], texts: list[str], tokenizer_dir=None,
                 seed: int = 0) -> Path:
    """A random-weight student saved in orchestrator.training.train.save_student's layout."""
    bundle = tmp / "bundle"
    bundle.mkdir(parents=True, exist_ok=True)
    if arch == "transformer":
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        tok.save_pretrained(str(bundle / "tokenizer"))
        vocab_size, encoding = len(tok), "wordpiece"
    else:
        vocab = Vocab.build(texts)
        vocab.save(bundle / "vocab.json")
        vocab_size, encoding = len(vocab), "words"
    specs = {t: get_task(t) for t in tasks}
    meta = {"tasks": {t: {"num_outputs": s.num_outputs, "pair": s.is_pair,
                          "regression": s.is_regression, "dev_splits": ["dev"],
                          "spec": _spec_dict(s)} for t, s in specs.items()},
            "encoding": encoding, "vocab_size": vocab_size}
    cfg = ExperimentConfig(student=StudentConfig(arch=arch, dropout=0.1,
                                                 **{"max_length": 20, **TINY[arch]}))
    torch.manual_seed(seed)
    model = build_from_meta(cfg, meta, None)
    with torch.no_grad():  # padding rows stay zero; everything else non-trivial
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    out = tmp / "student"
    out.mkdir()
    save_student(model, out, cfg, meta, bundle)
    return out


# ---------------------------------------------------------------------------------------------
# the worker loop's inputs


def random_bundle(root: Path, tasks=("sst2",), n: int = 96, n_dev: int = 32,
                  vocab: int = 40) -> Path:
    """A bundle as the pipeline writes one (word ids, teacher logits), of random rows."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    meta = {}
    for t in tasks:
        spec = get_task(t)
        k = len(spec.label_names)

        def ids(m):
            return [list(map(int, rng.integers(2, vocab, size=rng.integers(2, 9))))
                    for _ in range(m)]

        write_split(root / f"train-{t}.parquet", ids(n), None, None,
                    rng.integers(0, k, n).astype(float), rng.normal(size=(n, k)))
        write_split(root / f"dev-{t}-dev.parquet", ids(n_dev), None, None,
                    rng.integers(0, k, n_dev).astype(float))
        meta[t] = {"num_outputs": k, "pair": False, "regression": False, "dev_splits": ["dev"],
                   "train_size": n, "spec": {key: (list(v) if isinstance(v, tuple) else v)
                                             for key, v in asdict(spec).items()}}
    (root / "meta.json").write_text(json.dumps({"tasks": meta, "encoding": "words",
                                                "vocab_size": vocab, "embed_dim": None,
                                                "soft_labels": "precomputed"}))
    return root


def tiny_config(**train):
    """A BiLSTM of a few units trained in the caller's process (no Ray workers), one thread;
    ``train`` overrides the train section."""
    # dropout draws from the torch RNG as it trains: a resume must restore it
    return build_config({"student": {"arch": "bilstm", "embed_dim": 8, "hidden_size": 6,
                                     "relu_size": 8, "dropout": 0.2},
                         "train": {"num_workers": 0, "batch_size": 16, "lr": 0.01,
                                   "torch_threads": 1, **train}})


# ---------------------------------------------------------------------------------------------
# early stopping and startup order replayed without Tune


def replay(scheduler, trials, score="dev_score", cost="latency_ms") -> dict[str, int]:
    """Feed each trial's reports (one trial at a time, as max_concurrent=1 runs them) until the
    scheduler stops it; the number of reports each trial got to make."""
    made = {}
    for tid, (latency, scores) in trials.items():
        trial = SimpleNamespace(trial_id=tid)
        scheduler.on_trial_add(None, trial)
        for i, value in enumerate(scores, start=1):
            action = scheduler.on_trial_result(None, trial, {
                "training_iteration": i, score: value, cost: latency})
            made[tid] = i
            if action == "STOP":
                break
    return made


class Recorder(Searcher):
    """Suggests {"k": n} for its n-th suggestion; records what it is told, under which id."""

    def __init__(self):
        super().__init__(metric="dev_score", mode="max")
        self.suggested, self.results, self.completed = [], [], []

    def suggest(self, trial_id):
        self.suggested.append(trial_id)
        return {"k": len(self.suggested) - 1}

    def on_trial_result(self, trial_id, result):
        self.results.append((trial_id, result["dev_score"]))

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.completed.append((trial_id, error))


# The tang search's 8 configurations, each run alone to the end (2026-11-26, run
# 20261126-011112): per trial in drawn order, (batch-1 latency ms, estimated work in 1e10,
# seconds, dev accuracy at each of its 12 reports). Replayed under Pareto ASHA one at a time.

TANG_ALONE = {
    "ee6cb861": (5.77, 26.86, 201, [0.658, 0.656, 0.732, 0.752, 0.744, 0.747, 0.747, 0.751,
                                   0.748, 0.749, 0.774, 0.769]),
    "9fcc0c9f": (0.39, 1.54, 85, [0.509, 0.509, 0.509, 0.509, 0.538, 0.563, 0.57, 0.595,
                                  0.614, 0.616, 0.612, 0.624]),
    "ef1de1b1": (1.88, 8.69, 138, [0.663, 0.7, 0.737, 0.735, 0.757, 0.749, 0.755, 0.76, 0.764,
                                  0.771, 0.766, 0.758]),
    "5db50ab1": (0.5, 1.66, 110, [0.704, 0.648, 0.735, 0.74, 0.753, 0.757, 0.76, 0.767, 0.761,
                                 0.757, 0.767, 0.778]),
    "d7c93c10": (5.02, 29.26, 242, [0.584, 0.696, 0.679, 0.716, 0.667, 0.724, 0.718, 0.755,
                                   0.728, 0.764, 0.749, 0.722]),
    "42836c99": (1.58, 8.68, 100, [0.509, 0.593, 0.607, 0.635, 0.57, 0.634, 0.627, 0.622, 0.614,
                                  0.608, 0.622, 0.631]),
    "f2dd5ac5": (2.65, 15.17, 199, [0.655, 0.701, 0.725, 0.731, 0.716, 0.729, 0.747, 0.727,
                                   0.734, 0.735, 0.725, 0.757]),
    "223d8123": (4.81, 33.57, 389, [0.729, 0.757, 0.76, 0.76, 0.761, 0.784, 0.75, 0.768, 0.781,
                                   0.773, 0.786, 0.778]),
}
