"""The smoke search recorded by an MLflow tracking server with a PostgreSQL backend store, as on a
cluster: a throwaway PostgreSQL cluster (initdb in a temp dir, 127.0.0.1 on a free port), the
server started by ``scripts/mlflow_postgres_server.sh``, the search run against its http URI, then
the record read back over the REST API only."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import wait_for_health

from orchestrator.runtime import tracking

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[1]
PG_USER, PG_PASSWORD, PG_DB = "mlflow", "distillray-test", "mlflow"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path | None:
    """The directory with initdb, pg_ctl and createdb: where `initdb` on PATH really lives, else
    the newest /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    dirs = [Path(found).resolve().parent] if found else []
    dirs += sorted((p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")),
                   key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0, reverse=True)
    for d in dirs:
        if all((d / b).exists() for b in ("initdb", "pg_ctl", "createdb")):
            return d
    return None


def _os_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as the 'postgres' system user (created
    when missing); otherwise as ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        "postgres"], check=True)
    return "postgres"


def _as(user: str | None, cmd: list[str], **kw) -> subprocess.CompletedProcess:
    if user:
        cmd = ["runuser", "-u", user, "--", *cmd]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture()
def postgres():
    """A PostgreSQL cluster in a temp dir (password auth, TCP on 127.0.0.1 only, its socket in the
    same dir) with one database; stopped and removed afterwards. Yields the SQLAlchemy URI."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl, createdb) not found on PATH or "
                    "under /usr/lib/postgresql/*/bin")
    pytest.importorskip("psycopg2", reason="psycopg2 (pip install psycopg2-binary) is needed "
                                           "for a postgresql:// tracking store")
    user = _os_user()
    # not under pytest's tmp_path: its parents are private to the test user
    root = Path(tempfile.mkdtemp(prefix="distillray-pg-"))
    if user:
        shutil.chown(root, user)
    data, port = root / "data", _free_port()
    (root / "pw").write_text(PG_PASSWORD + "\n")
    if user:
        shutil.chown(root / "pw", user)
    _as(user, [str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, "--pwfile", str(root / "pw"),
               "--auth", "scram-sha-256", "-E", "UTF8", "--no-sync"])
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
    try:
        _as(user, [str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "pg.log"),
                   "-w", "-t", "60", "start"])
        env = os.environ | {"PGPASSWORD": PG_PASSWORD}
        subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER,
                        PG_DB], check=True, env=env, timeout=60)
        yield f"postgresql+psycopg2://{PG_USER}@127.0.0.1:{port}/{PG_DB}"
    finally:
        try:
            _as(user, [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def mlflow_server(postgres, tmp_path):
    """``scripts/mlflow_postgres_server.sh`` on a free port; yields (base URL, artifact root)."""
    port = _free_port()
    artifacts = tmp_path / "artifacts"
    env = os.environ | {"MLFLOW_PG_URI": postgres, "PGPASSWORD": PG_PASSWORD,
                        "MLFLOW_ARTIFACTS": str(artifacts), "MLFLOW_PORT": str(port),
                        "PYTHON": sys.executable}
    log = open(tmp_path / "mlflow-server.log", "w")
    proc = subprocess.Popen(["bash", str(REPO / "scripts" / "mlflow_postgres_server.sh"),
                             "--workers", "1"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            process_group=0)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(base, proc, 120, "the MLflow server",
                        lambda: ":\n" + (tmp_path / "mlflow-server.log").read_text()[-3000:])
        yield base, artifacts
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):  # the server and its uvicorn workers
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=30)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()


def _post(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _get(base: str, path: str, params: dict) -> dict:
    with urllib.request.urlopen(f"{base}{path}?{urllib.parse.urlencode(params)}", timeout=30) as r:
        return json.loads(r.read())


def test_smoke_search_recorded_in_postgres_through_the_server(mlflow_server, tmp_path):
    base, artifacts = mlflow_server
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    res = subprocess.run([sys.executable, str(REPO / "tune_mkd.py"), "--preset", "smoke",
                          "--tracking-uri", base, "--work-root", str(tmp_path / ".distillray")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=800,
                         process_group=0)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]

    exps = _post(base, "/api/2.0/mlflow/experiments/search", {"max_results": 10})["experiments"]
    exp = next(e for e in exps if e["name"] == "distillray")
    runs = _post(base, "/api/2.0/mlflow/runs/search", {
        "experiment_ids": [exp["experiment_id"]],
        "filter": f"tags.`{tracking.TAG_SEARCH}` = 'smoke'", "max_results": 100})["runs"]

    def tags(run):
        return {t["key"]: t["value"] for t in run["data"].get("tags", [])}

    parents = [r for r in runs if tags(r).get(tracking.TAG_KIND) == "search"]
    children = [r for r in runs if tags(r).get(tracking.TAG_KIND) == "trial"]
    assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED"
    assert len(children) >= 2
    for c in children:
        assert tags(c)[tracking.TAG_PARENT] == parents[0]["info"]["run_id"]
        assert c["info"]["status"] in ("FINISHED", "KILLED")
        assert {"dev_score", "latency_ms"} <= {m["key"] for m in c["data"]["metrics"]}

    # artifacts: listed through the server, stored under its artifact root
    finished = [c for c in children if c["info"]["status"] == "FINISHED"]
    assert finished
    run_id = finished[0]["info"]["run_id"]
    top = {f["path"] for f in _get(base, "/api/2.0/mlflow/artifacts/list",
                                   {"run_id": run_id}).get("files", [])}
    assert {"student", "learning_curve.png"} <= top, top
    student = {f["path"] for f in _get(base, "/api/2.0/mlflow/artifacts/list",
                                       {"run_id": run_id, "path": "student"}).get("files", [])}
    assert {"student/model.safetensors", "student/student.json"} <= student, student
    parent_files = {f["path"] for f in _get(base, "/api/2.0/mlflow/artifacts/list",
                                            {"run_id": parents[0]["info"]["run_id"]})["files"]}
    assert "search_summary.json" in parent_files
    assert list(artifacts.rglob("model.safetensors")), \
        f"no student weights under the server's artifact root {artifacts}"
