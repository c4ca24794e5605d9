"""A student checkpoint directory: its file names, in one place, and how to read one back.

A training report leaves one directory (Ray Train's ``checkpoint_*``, or the trial's own in
local mode, :mod:`orchestrator.training.trial_checkpoints`); a finished run logs the best one's
student files as MLflow artifacts (``student/``), and export and serving read those::

    model.safetensors         the student's weights (safetensors: never a pickle)
    student.json              the student config and meta that rebuild it
    vocab.json | tokenizer/   its input: word vocabulary (word students) or the teacher's tokenizer
    model-<task>.safetensors  MKD stage 2: each task's fine-tuned student
    metrics.json              the report's dev metrics (written last: its presence marks the
                              directory complete)
    train_state.json          the report, best dev score, patience count, done
    optimizer.pt, resume.pt   stage 1's optimizer; torch RNG, batch streams, stage-2 optimizers
                              (tensors only, loaded with ``weights_only=True``)
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODEL = "model.safetensors"
STUDENT = "student.json"
VOCAB = "vocab.json"
TOKENIZER = "tokenizer"
METRICS = "metrics.json"
STATE = "train_state.json"
OPTIMIZER = "optimizer.pt"
RESUME = "resume.pt"
TASK_MODEL_GLOB = "model-*.safetensors"

# what rebuilds the student (load_student) and what a run logs as its student
STUDENT_FILES = (MODEL, STUDENT)
LOGGED_FILES = (MODEL, STUDENT, VOCAB, METRICS)


def task_model(task: str) -> str:
    """The file of MKD stage 2's student fine-tuned for ``task``."""
    return f"model-{task}.safetensors"


@dataclass(frozen=True)
class Checkpoint:
    """One complete checkpoint directory of a training run."""
    dir: Path
    report: int  # 0-based
    metrics: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, d: str | Path) -> "Checkpoint | None":
        """The checkpoint in ``d``; None when a file is missing or its JSON is unreadable (a
        copy cut short is not a checkpoint)."""
        d = Path(d)
        try:
            metrics = json.loads((d / METRICS).read_text())
            state = json.loads((d / STATE).read_text())
            report = int(state.get("report", state.get("epoch")))
        except (OSError, ValueError, TypeError):
            return None
        if not all((d / f).is_file() for f in STUDENT_FILES):
            return None
        return cls(d, report, metrics, state)

    @property
    def done(self) -> bool:
        """The run's last report: training ended here (its epochs, or patience)."""
        return bool(self.state.get("done"))

    @property
    def score(self) -> float:
        v = self.metrics.get("dev_score")
        return float(v) if isinstance(v, (int, float)) and not math.isnan(v) else -math.inf


def latest_and_best(root: str | Path) -> tuple[Checkpoint | None, Checkpoint | None]:
    """(latest, best by dev score) of the complete ``checkpoint_*`` directories under ``root``
    (a Ray Train run's folder); ties go to the earlier report. (None, None) when there is none."""
    root = Path(root)
    found = [c for c in (Checkpoint.read(d) for d in sorted(root.glob("checkpoint_*"))
                         if root.is_dir()) if c is not None]
    if not found:
        return None, None
    latest = max(found, key=lambda c: c.report)
    best = max(found, key=lambda c: (c.score, -c.report))
    return latest, best


def student_files(d: str | Path) -> list[Path]:
    """The files of ``d`` a run logs as its student: the weights, config, vocabulary, metrics
    and stage 2's per-task students (the tokenizer folder is logged beside them)."""
    d = Path(d)
    return [d / f for f in (*LOGGED_FILES, *sorted(p.name for p in d.glob(TASK_MODEL_GLOB)))
            if (d / f).is_file()]
