"""A trained student as a text-in, predictions-out object: used by the MLflow model and
export."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from orchestrator.training import checkpoint as ckpt
from orchestrator.training.bundle import TaskTensors
from orchestrator.training.train import load_student, make_batch


class StudentPredictor:
    """Loads a saved student dir (model.safetensors, student.json, vocab.json | tokenizer/)."""

    def __init__(self, student_dir: str | Path):
        self.dir = Path(student_dir)
        self.model, self.info = load_student(self.dir)
        meta = self.info["meta"]
        self.tasks = list(meta["tasks"])
        self.encoding = meta["encoding"]
        self.max_length = int(self.info["student"]["max_length"])
        if self.encoding == "words":
            from tasks.vocab import Vocab
            self.vocab = Vocab.load(self.dir / ckpt.VOCAB)
        else:
            from transformers import AutoTokenizer
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.dir / ckpt.TOKENIZER))

    def encode(self, texts_a: list[str], texts_b: list[str] | None) -> TaskTensors:
        n = len(texts_a)
        if self.encoding == "words":
            a = [self.vocab.encode(t, self.max_length) for t in texts_a]
            b = [self.vocab.encode(t, self.max_length) for t in texts_b] if texts_b else None
            return TaskTensors(a, b, None, np.full(n, np.nan), None)
        out = self.tokenizer(texts_a, texts_b, truncation=True, max_length=self.max_length)
        types = out.get("token_type_ids") or [[0] * len(x) for x in out["input_ids"]]
        return TaskTensors(out["input_ids"], None, types, np.full(n, np.nan), None)

    @torch.inference_mode()
    def logits(self, texts_a: list[str], texts_b: list[str] | None = None,
               task: str | None = None) -> np.ndarray:
        from orchestrator.training.train import forward

        task = task or self.tasks[0]
        data = self.encode(texts_a, texts_b)
        if not len(data):
            return np.zeros((0, int(self.info["meta"]["tasks"][task]["num_outputs"])), np.float32)
        return forward(self.model, make_batch(data, list(range(len(data)))), task).float().numpy()


    def predict(self, texts_a: list[str], texts_b: list[str] | None = None,
                task: str | None = None) -> list[dict]:
        """Predictions as the exported ``predict.py`` gives them (one code path:
        :func:`orchestrator.deploy.predict_standalone.predictions`): label, probabilities and
        logits, or a score for regression."""
        from orchestrator.deploy.predict_standalone import predictions

        task = task or self.tasks[0]
        return predictions(task, task_info(self.info["meta"])[task],
                           self.logits(texts_a, texts_b, task))


def task_info(meta: dict) -> dict[str, dict]:
    """Per task of a student's bundle meta: outputs, pair, regression, label names and the
    graph output's name, as ``export.json`` and ``predict.py`` hold them."""
    out = {}
    for t, m in meta["tasks"].items():
        n = int(m["num_outputs"])
        labels = (m.get("spec") or {}).get("label_names")
        regression = bool(m.get("regression", n == 1))
        if not regression and (not labels or len(labels) != n):
            labels = [str(i) for i in range(n)]
        out[t] = {"num_outputs": n, "pair": bool(m["pair"]), "regression": regression,
                  "labels": None if regression else [str(x) for x in labels],
                  "output": f"logits_{t}"}
    return out


def _column(frame, *names):
    for n in names:
        if n in frame:
            return [str(x) for x in frame[n]]
    return None


try:
    import mlflow.pyfunc

    class StudentPyfunc(mlflow.pyfunc.PythonModel):
        """MLflow model: rows with ``text_a`` (or ``text``), and ``text_b`` for pairs -> one
        prediction per row, as ``predict.py`` gives it: ``task``, ``label``, ``probabilities``
        (label -> probability) and ``logits``; ``task`` and ``score`` for regression."""

        def load_context(self, context):
            self.predictor = StudentPredictor(context.artifacts["student"])

        def predict(self, context, model_input, params=None):
            import pandas as pd

            if not isinstance(model_input, pd.DataFrame):
                model_input = pd.DataFrame(model_input)
            a = _column(model_input, "text_a", "text")
            if a is None:
                raise ValueError("the input needs a text_a (or text) column of raw texts, and "
                                 "text_b for sentence pairs")
            b = _column(model_input, "text_b")
            task = (params or {}).get("task")
            return pd.DataFrame(self.predictor.predict(a, b, task))
except ImportError:  # pragma: no cover - mlflow is a declared dependency
    StudentPyfunc = None
