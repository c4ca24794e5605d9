"""The best student of a search: find it in MLflow, log it as an MLflow model, register it."""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

from mlflow.tracking import MlflowClient

from orchestrator.runtime import faults, tracking
from orchestrator.training.checkpoint import STUDENT_FILES


# the model's code, copied into each registered model: found, not imported (MLflow runs it)
SERVED_MODEL_FILE = Path(__file__).resolve().parents[1] / "deploy" / "served_model.py"


class NotFoundError(LookupError):
    pass


def _search_runs(client: MlflowClient, search: str, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise NotFoundError(f"no MLflow experiment {experiment!r} in this tracking store")
    parents = tracking.find_runs(client, exp.experiment_id, {tracking.TAG_KIND: "search",
                                                             tracking.TAG_SEARCH: search})
    if not parents:
        raise NotFoundError(f"no search named {search!r} in experiment {experiment!r}; "
                            "list searches in the MLflow UI (distillray ui)")
    return exp, parents[0]


def best_child_run(client: MlflowClient, search: str, experiment: str = "distillray"):
    exp, parent = _search_runs(client, search, experiment)
    trial_id = parent.data.tags.get("distillray.best_trial")
    runs = tracking.find_runs(client, exp.experiment_id, {tracking.TAG_SEARCH: search,
                                                          tracking.TAG_KIND: "trial"})
    if trial_id:
        runs = [r for r in runs if r.data.tags.get(tracking.TAG_TRIAL) == trial_id] or runs
    runs = [r for r in runs if "final_best_dev_score" in r.data.metrics or "best_dev_score" in r.data.metrics]
    if not runs:
        raise NotFoundError(f"search {search!r} has no finished trial with a dev score")
    def key(r):
        return r.data.metrics.get("final_best_dev_score", r.data.metrics.get("best_dev_score"))
    return parent, max(runs, key=key)


def best_of_search(search: str, uri: str | None = None, experiment: str = "distillray") -> dict:
    client = MlflowClient(tracking.resolve_uri(uri))
    parent, run = best_child_run(client, search, experiment)
    m = run.data.metrics
    out = {"search": search, "parent_run": parent.info.run_id, "best_run": run.info.run_id,
           "trial_id": run.data.tags.get(tracking.TAG_TRIAL),
           "dev_score": m.get("final_best_dev_score", m.get("best_dev_score")),
           "latency_ms": m.get("latency_ms"), "non_embedding_params": m.get("non_embedding_params"),
           "artifacts": f"{run.info.artifact_uri}/student"}
    for k, v in sorted(run.data.params.items()):
        if k.startswith("sampled."):
            out[k] = v
    model = parent.data.tags.get("distillray.registered_model")
    if model:
        out["registered_model"] = model
    return out


def download_student(client: MlflowClient, run_id: str, dst: str | Path) -> Path:
    from mlflow.exceptions import MlflowException

    try:
        path = client.download_artifacts(run_id, "student", str(dst))
    except MlflowException:  # an interrupted or early-stopped trial logged no student
        raise NotFoundError(f"run {run_id} has no student artifacts: the trial did not finish "
                            "(stopped or interrupted); pick another run") from None
    p = Path(path)
    for f in STUDENT_FILES:
        if not (p / f).is_file():
            raise NotFoundError(f"run {run_id} lacks artifact student/{f}: the trial did not finish "
                                "writing its student; pick another run")
    return p


def registered_version(client: MlflowClient, model_name: str, run_id: str) -> str | None:
    """The version of ``model_name`` already registered from ``run_id``, if any (the newest)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'")
    except MlflowException:
        return None
    return str(max(int(v.version) for v in versions)) if versions else None


def served_requirements(export_dir: str | Path) -> list[str]:
    """What the registered model needs to serve, pinned to the versions here: MLflow, pandas,
    numpy, ONNX Runtime, and ``tokenizers`` when the export's ``predict.py`` uses that package.
    Not distillray: the model runs from its exported files alone."""
    import json
    from importlib.metadata import version

    names = ["mlflow", "pandas", "numpy", "onnxruntime"]
    info = json.loads((Path(export_dir) / "export.json").read_text())
    if (info.get("tokenizer") or {}).get("kind") == "tokenizers":
        names.append("tokenizers")
    return [f"{n}=={version(n)}" for n in names]


def register_best(client: MlflowClient, uri: str, parent_run_id: str, best_run_id: str,
                  model_name: str, sample_texts: list[tuple[str, str | None]]) -> tuple[str, bool]:
    """Log the best student as an MLflow pyfunc model (signature + input example) in its trial run
    and register it under ``model_name``; returns the model version and whether it is new. A
    search run again (resumed after a kill during registration, or finished and run again) finds
    the version registered from the same run and completes its tags instead of adding one.

    The model is the student exported to ONNX with its standalone ``predict.py`` (checked
    against the trained student by the export), served by :mod:`orchestrator.deploy.served_model`:
    it needs mlflow, pandas, numpy and onnxruntime, not this repository."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    from orchestrator.deploy.export import export_student

    version = registered_version(client, model_name, best_run_id)
    if version is not None:
        _tag_version(client, model_name, version, best_run_id, parent_run_id)
        return version, False
    mlflow.set_tracking_uri(uri)
    with tempfile.TemporaryDirectory() as d:
        student = download_student(client, best_run_id, d)
        pairs = bool(sample_texts) and sample_texts[0][1] is not None
        checks = [a for a, _ in sample_texts] + ([b for _, b in sample_texts] if pairs else [])
        # the export checks that predict.py and ONNX Runtime answer as the trained student does
        exported = export_student(student, Path(d) / "export", formats=("onnx",),
                                  check_texts=checks or None).out_dir
        cols = {"text_a": [a for a, _ in sample_texts]}
        if pairs:
            cols["text_b"] = [b for _, b in sample_texts]
        example = pd.DataFrame(cols)
        # the output (label, probabilities, logits) holds nested values: only the input is typed
        signature = infer_signature(example)
        with mlflow.start_run(run_id=best_run_id), warnings.catch_warnings():
            # MLflow suggests type hints on predict each time it loads the served model (three
            # times while logging it, in colour): the signature is given here instead
            warnings.filterwarnings("ignore", message=r"(\x1b\[\d+m)?Add type hints to the "
                                    r"`predict` method", category=UserWarning)
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(SERVED_MODEL_FILE),
                artifacts={"export": str(exported)},
                signature=signature, input_example=example, registered_model_name=model_name,
                pip_requirements=served_requirements(exported))
    version = str(info.registered_model_version)
    faults.point("register_model")  # registered, not yet tagged
    _tag_version(client, model_name, version, best_run_id, parent_run_id)
    return version, True


def _tag_version(client: MlflowClient, model_name: str, version: str, best_run_id: str,
                 parent_run_id: str) -> None:
    m = client.get_run(best_run_id).data.metrics
    for k in ("final_best_dev_score", "latency_ms", "non_embedding_params"):
        if k in m:
            client.set_model_version_tag(model_name, version, k, str(m[k]))
    client.set_tag(parent_run_id, "distillray.registered_model", f"{model_name}/{version}")
