"""An MLflow tracking server that does not answer stops a search at its start: a non-zero exit
with a message naming the server, before Ray, teachers or trials start."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _closed_port() -> int:
    with socket.socket() as s:  # bound, never listening, then released: nothing answers there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tune_fails_fast_when_the_tracking_server_is_unreachable(tmp_path):
    uri = f"http://127.0.0.1:{_closed_port()}"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "orchestrator.cli", "tune", "--preset", "smoke",
                          "--tracking-uri", uri, "--work-root", str(tmp_path / ".distillray")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    seconds = time.time() - t0
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert f"MLflow tracking server {uri} is unreachable" in res.stderr, out
    assert "--tracking-uri" in res.stderr  # says how to point it elsewhere
    assert "Traceback" not in out
    # nothing started: no Ray instance, no teacher, no work root
    assert "Started a local Ray instance" not in out and "[ray]" not in out, out
    assert "[teacher]" not in out
    assert not (tmp_path / ".distillray").exists()
    assert seconds < 120, f"took {seconds:.0f}s"
