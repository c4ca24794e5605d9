"""A best trial that saved no student (stopped or interrupted) is reported, not a traceback."""
from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.record.registry import NotFoundError, download_student


def test_download_student_of_a_run_without_one_names_the_run(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(exp).info.run_id
    with pytest.raises(NotFoundError, match=f"run {run} has no student artifacts"):
        download_student(client, run, tmp_path / "dst")
