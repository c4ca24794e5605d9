"""MLflow as the record: one place that knows the tracking store, experiments and run tags.

Everything goes through an explicit ``MlflowClient`` and run ids, never MLflow's process-global
"active run", so the driver, Tune trials and Ray Train workers can all log to the same runs.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from orchestrator.runtime.redact import redact, redact_deep

# Tags that make runs findable: a search's parent, a trial's child, a report cell.
TAG_KIND = "distillray.kind"  # search | trial | teacher | report | stage
TAG_SEARCH = "distillray.search"
TAG_TRIAL = "distillray.trial_id"
TAG_PARENT = "mlflow.parentRunId"
TAG_ERROR = "distillray.error"


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or used."""


def resolve_uri(uri: str | None = None) -> str:
    """Explicit URI, else $MLFLOW_TRACKING_URI, else ``sqlite:///<cwd>/mlflow.db``."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        uri = f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    return uri


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail at start, not after trials ran, when a tracking server does not answer."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                if r.status != 200:
                    raise TrackingError(f"MLflow server {redact(uri)} answered {r.status} on /health")
        except (urllib.error.URLError, OSError) as e:
            raise TrackingError(
                f"MLflow tracking server {redact(uri)} is unreachable ({redact(str(e))}); start it "
                "(`mlflow server --host 127.0.0.1 ...`) or set --tracking-uri / "
                "MLFLOW_TRACKING_URI to a reachable store") from None
    elif uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.parent.exists():
            raise TrackingError(f"directory of tracking store {path} does not exist")


def default_artifact_location(uri: str, work_root: str | Path) -> str | None:
    """Where a new experiment keeps artifacts unless ``tracking.artifact_location`` says: an
    http(s) tracking server chooses (with ``mlflow server --artifacts-destination`` it stores and
    serves them itself, so trials on any node can upload); a local store uses
    ``<work_root>/mlartifacts``."""
    if uri.startswith(("http://", "https://")):
        return None
    return str(Path(work_root) / "mlartifacts")


# MLflow 3 UIs that read this experiment tag open a model-development experiment on its runs
# table ("Model training"), not on the GenAI overview; 3.17's reads the view from the address
# instead (runs_page), so both are given
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def runs_page(base: str, experiment_id: str) -> str:
    """The MLflow UI's runs table of an experiment in its "Model training" view: MLflow 3.17's UI
    takes the view from this query parameter (or the browser's last choice), not from the tag."""
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def get_experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if TAG_EXPERIMENT_KIND not in exp.tags:
            client.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
        return exp.experiment_id
    if artifact_location and "://" not in artifact_location:
        Path(artifact_location).mkdir(parents=True, exist_ok=True)
        artifact_location = Path(artifact_location).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location,
                                        tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})
    except Exception:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def experiment_id_for(client: MlflowClient, cfg, name: str | None = None) -> str:
    """The id of ``cfg.tracking.experiment`` (or ``name``), created on first use with
    ``tracking.artifact_location`` or :func:`default_artifact_location`."""
    uri = resolve_uri(cfg.tracking.uri)
    return get_experiment_id(client, name or cfg.tracking.experiment,
                             cfg.tracking.artifact_location
                             or default_artifact_location(uri, cfg.work_root))


def find_runs(client: MlflowClient, experiment_id: str, tags: dict[str, str],
              statuses: Iterable[str] | None = None) -> list:
    clauses = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
    runs = client.search_runs([experiment_id], filter_string=" and ".join(clauses),
                              max_results=1000)
    if statuses is not None:
        allowed = set(statuses)
        runs = [r for r in runs if r.info.status in allowed]
    return runs


def start_run(client: MlflowClient, experiment_id: str, name: str, tags: dict[str, str],
              parent_run_id: str | None = None) -> str:
    tags = dict(tags)
    if parent_run_id:
        tags[TAG_PARENT] = parent_run_id
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    return run.info.run_id


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Log ``params`` (nested dicts flattened to dotted keys), each URI's secret redacted: every
    UI user reads params, and ``tracking.uri`` may hold a database password."""
    from mlflow.entities import Param

    existing = client.get_run(run_id).data.params
    items = [Param(k, _short(redact_deep(v))) for k, v in flatten(params).items()
             if k not in existing]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float],
                step: int | None = None) -> None:
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items()
             if isinstance(v, (int, float)) and v == v]
    if items:
        client.log_batch(run_id, metrics=items)


def log_dict_artifact(client: MlflowClient, run_id: str, obj: Any, name: str) -> None:
    """``obj`` as a YAML or JSON artifact, each URI's secret redacted."""
    obj = redact_deep(obj)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / name
        if name.endswith((".yaml", ".yml")):
            import yaml
            p.write_text(yaml.safe_dump(obj, sort_keys=False))
        else:
            p.write_text(json.dumps(obj, indent=1, default=str))
        client.log_artifact(run_id, str(p))


def end_run(client: MlflowClient, run_id: str, ok: bool, error: str | None = None) -> None:
    if error:
        client.set_tag(run_id, TAG_ERROR, redact(error)[:4000])
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _short(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return s[:500]


def trial_run_name(number: int, cfg) -> str:
    """A trial's run name that says what it trains: ``trial-3 bilstm h150 lr1.3e-3`` (the
    trial's number in its search, the student's shape and learning rate)."""
    from students.registry import student_kind

    st = cfg.student
    shape = student_kind(st.arch).shape(st)
    return f"trial-{number} {st.arch} {shape} lr{_short_float(cfg.train.lr)}"


def _short_float(x: float) -> str:
    """1.3e-3 for 0.0013; 0.5 stays 0.5."""
    x = float(x)
    if x == 0 or 0.1 <= abs(x) < 1e3:
        return f"{x:.3g}"
    m, e = f"{x:.1e}".split("e")
    return f"{m.rstrip('0').rstrip('.')}e{int(e)}"
