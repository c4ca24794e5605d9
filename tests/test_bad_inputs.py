"""The bad-input matrix (docs/user-path.md#the-bad-input-matrix): each row a case that must stop
with a clear message, or be handled safely, and leave nothing behind where that applies."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# ---------------------------------------------------------------------------------------------
# credentials, resume, export, growth

SECRET = "S3cr3tPw"
PG_URI = f"postgresql://mlflow:{SECRET}@db.internal:5432/mlflow"


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*")) if root.exists() else []


def test_redact_hides_uri_passwords_and_secret_query_values():
    from orchestrator.runtime.redact import has_secret, redact, redact_deep

    assert redact(PG_URI) == "postgresql://mlflow:***@db.internal:5432/mlflow"
    assert redact(f"https://u:{SECRET}@h:5000/x?sslmode=require&token={SECRET}") == \
        "https://u:***@h:5000/x?sslmode=require&token=***"
    assert redact(f"cannot reach {PG_URI} (timeout)") == \
        "cannot reach postgresql://mlflow:***@db.internal:5432/mlflow (timeout)"
    # nothing secret: unchanged
    for uri in ("sqlite:////tmp/mlflow.db", "http://127.0.0.1:5000",
                "postgresql+psycopg2://mlflow@db:5432/mlflow"):
        assert redact(uri) == uri and not has_secret(uri)
    assert has_secret(PG_URI)
    assert redact_deep({"a": [PG_URI, 3], "b": {"c": PG_URI}}) == \
        {"a": [redact(PG_URI), 3], "b": {"c": redact(PG_URI)}}


def test_tracking_uri_password_never_reaches_params_yaml_or_error_tags(tmp_path):
    """The resolved config (``tracking.uri`` with a password) as a search logs it: params, the
    ``search_space.yaml`` artifact, a failed run's error tag."""
    from mlflow.tracking import MlflowClient

    from orchestrator.config import ExperimentConfig, with_values
    from orchestrator.runtime import tracking

    cfg = with_values(ExperimentConfig(), {"tracking.uri": PG_URI})
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = tracking.get_experiment_id(client, "x", str(tmp_path / "art"))
    rid = tracking.start_run(client, exp, "search", {})
    tracking.log_params(client, rid, cfg.to_dict())
    tracking.log_dict_artifact(client, rid, {"config": cfg.to_dict()}, "search_space.yaml")
    tracking.end_run(client, rid, False, f"OperationalError: could not connect to {PG_URI}")
    run = client.get_run(rid)
    assert run.data.params["tracking.uri"] == "postgresql://mlflow:***@db.internal:5432/mlflow"
    assert SECRET not in repr(run.data.params) and SECRET not in repr(run.data.tags)
    yaml_text = (tmp_path / "art").rglob("search_space.yaml").__next__().read_text()
    assert "postgresql://mlflow:***@db.internal" in yaml_text and SECRET not in yaml_text


def test_next_steps_never_print_a_password():
    from orchestrator.search.search import next_steps

    text = next_steps("s", PG_URI, "distillray", "1", True, "m/1")
    assert SECRET not in text
    assert "export MLFLOW_TRACKING_URI=" in text and "postgresql://mlflow:***@" in text
    assert "best student:  distillray best --search s\n" in text and "--tracking-uri" not in text


def test_unreachable_store_error_is_redacted():
    from orchestrator.runtime.tracking import TrackingError, check_reachable

    with pytest.raises(TrackingError) as e:
        check_reachable(f"http://u:{SECRET}@127.0.0.1:9/", timeout=2)
    assert "unreachable" in str(e.value) and SECRET not in str(e.value)
    assert "http://u:***@127.0.0.1:9/" in str(e.value)


def test_ui_gets_the_store_from_the_environment_not_argv(tmp_path, monkeypatch, capsys):
    """`distillray ui` hands MLflow the store in $MLFLOW_BACKEND_STORE_URI (argv shows in `ps`)
    and prints it redacted."""
    import mlflow.tracking

    from orchestrator import cli

    seen = {}

    def fake_execv(path, argv):
        seen["argv"] = list(argv)
        seen["env"] = os.environ.get("MLFLOW_BACKEND_STORE_URI")
        raise SystemExit(0)

    class NoStore:
        def __init__(self, uri):
            raise RuntimeError("no store here")

    monkeypatch.setattr(cli.os, "execv", fake_execv)
    monkeypatch.setattr(mlflow.tracking, "MlflowClient", NoStore)
    monkeypatch.delenv("MLFLOW_BACKEND_STORE_URI", raising=False)
    with pytest.raises(SystemExit):
        cli.main(["ui", "--tracking-uri", PG_URI])
    assert seen["env"] == PG_URI
    assert not any(SECRET in a for a in seen["argv"]), seen["argv"]
    assert seen["argv"][:4] == [sys.executable, "-m", "mlflow", "ui"]
    out = capsys.readouterr().out
    assert "postgresql://mlflow:***@db.internal" in out and SECRET not in out


def test_docs_put_no_secret_on_a_command_line():
    """No PGPASSWORD=... or user:password@ URI in a documented command."""
    import re

    root = Path(__file__).resolve().parents[1]
    docs = [root / "README.md", *sorted((root / "docs").glob("*.md")),
            *sorted((root / "scripts").glob("*.sh"))]
    bad = re.compile(r"PGPASSWORD=\S|MLFLOW_TRACKING_PASSWORD=\S|://[^\s/:@]+:[^\s/@*<]+@")
    hits = [f"{p.relative_to(root)}:{i}: {line.strip()}" for p in docs
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if bad.search(line)]
    assert not hits, "secrets on a command line:\n" + "\n".join(hits)
