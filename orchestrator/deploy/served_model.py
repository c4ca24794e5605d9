"""The registered MLflow model of a student, as MLflow loads it ("models from code").

MLflow copies this file into the logged model and runs it there, where distillray is neither
installed nor on the path: it imports only mlflow and pandas, and the exported ``predict.py``
that lies in the model's ``export`` artifact (numpy, onnxruntime, and the ``tokenizers``
package for tokenizers that predict.py does not reimplement). So the model serves from any
environment that holds what its MLmodel lists::

    mlflow models serve -m models:/<name>/<version> --env-manager uv

Input: rows with ``text_a`` (or ``text``), and ``text_b`` for sentence pairs; params may name
the ``task`` of a multi-task student (default: its first). Output: one prediction per row, as
``predict.py`` gives it: ``task``, ``label``, ``probabilities`` (label -> probability) and
``logits``; ``task`` and ``score`` for regression.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

EXPORT_ARTIFACT = "export"  # the artifact holding `distillray export`'s files (ONNX only)


def _column(frame: pd.DataFrame, *names: str) -> list[str] | None:
    for n in names:
        if n in frame:
            return [str(x) for x in frame[n]]
    return None


class ServedStudent(PythonModel):
    def load_context(self, context):
        d = Path(context.artifacts[EXPORT_ARTIFACT])
        spec = importlib.util.spec_from_file_location("distillray_export_predict",
                                                      d / "predict.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.predictor = module.Predictor(d, runtime="onnx")

    def predict(self, context, model_input, params=None):
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        a = _column(model_input, "text_a", "text")
        if a is None:
            raise ValueError("the input needs a text_a (or text) column of raw texts, and "
                             "text_b for sentence pairs")
        b = _column(model_input, "text_b")
        task = (params or {}).get("task") or next(iter(self.predictor.tasks))
        return pd.DataFrame(self.predictor.predict(a, b, task))


mlflow.models.set_model(ServedStudent())
