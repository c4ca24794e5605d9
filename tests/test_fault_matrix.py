"""A few points of scripts/fault_matrix.py on every submission: the smoke search killed while
draws wait at the synchronous first rung, during registration of the best model, and with a
trial's process dying mid-epoch; each time the same command finishes the search with nothing lost
or duplicated (the script's checks: trials, MLflow child runs, rungs, soft-label cache, one model
version, the best trial against an uninterrupted run)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[1]


def test_fault_matrix_points_resume_with_nothing_lost(tmp_path):
    points = "rung_waiting,register_model,trial_process"
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "fault_matrix.py"),
                          "--points", points, "--root", str(tmp_path)],
                         capture_output=True, text=True, timeout=2300)
    out = res.stdout + res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert res.returncode == 0 and summary["failed"] == 0, out[-6000:]
    assert set(summary["table"]) == set(points.split(","))
    assert all(c["pass"] + c["explained"] == 1 for c in summary["table"].values()), summary
    # the same command again: every cell is in the ledger, the reference is kept; nothing reruns
    again = subprocess.run([sys.executable, str(REPO / "scripts" / "fault_matrix.py"),
                            "--points", points, "--root", str(tmp_path)],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "resuming: 3 cell(s) already in" in again.stdout and "reference: best" in again.stdout
    assert " run 1 " not in again.stdout.replace("\n", " ")
    assert json.loads(again.stdout.strip().splitlines()[-1])["table"] == summary["table"]
