"""The user's view, in a real browser (Playwright driving the system Chromium): the Ray dashboard
while the smoke search runs, then the MLflow UI of its record. One smoke search serves every check.
Screenshots land in the test's temporary folder (and, with $DISTILLRAY_SCREENSHOTS=DIR, there)."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import wait_for_health

from orchestrator.runtime import faults

CHROMIUM = "/usr/bin/chromium"
# flags that work in a container without a display, GPU or network
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parent.parent
MODEL = "smoke-student"

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(not Path(CHROMIUM).is_file(),
                       reason=f"{CHROMIUM} missing: `make venv` installs Debian's chromium as root"),
]
playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install -e .[dev]")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _shots(tmp: Path) -> Path:
    d = Path(os.environ.get("DISTILLRAY_SCREENSHOTS") or tmp / "screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _ray_token() -> str | None:
    f = Path.home() / ".ray" / "auth_token"
    return f.read_text().strip() if f.is_file() else None


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def _watch_dashboard(browser, url: str, proc, shots: Path, timeout: float = 240) -> dict:
    """Reload the dashboard's Actors page while the search runs, until it lists the teacher actor
    (TeacherWorker) and a trial's actor alive together. The first trial holds at the end of its
    first epoch until the caller releases it (``faults`` hold mode): the smoke trials take
    seconds, less than one page load on a busy machine, so without the hold the page could miss
    them all."""
    token = _ray_token()  # local clusters require Ray's token (~/.ray/auth_token)
    ctx = browser.new_context(viewport={"width": 1600, "height": 1000},
                              extra_http_headers={"Authorization": f"Bearer {token}"}
                              if token else {})
    page = ctx.new_page()
    seen = {"teacher": False, "trials": 0, "text": ""}
    deadline = time.time() + timeout
    loaded = False
    try:
        while time.time() < deadline and proc.poll() is None:
            try:
                if not loaded:
                    page.goto(f"{url}/#/actors", timeout=15000)
                    loaded = True
                else:  # the list does not refresh itself
                    page.reload(timeout=15000)
                page.wait_for_selector("text=TOTAL", timeout=10000)
                page.wait_for_timeout(500)
                text = page.inner_text("body")
            except playwright_api.Error:
                loaded = False
                continue
            # a trial runs in a Tune actor (class ImplicitFunc, repr: the trainable, _trial);
            # local-mode trials reuse it, so one actor may serve several trials in turn
            teacher = "TeacherWorker" in text
            trials = text.count("ImplicitFunc")
            seen["teacher"] |= teacher
            alive = re.search(r"ALIVE\s*x\s*(\d+)", text)
            if teacher and trials and "_trial" in text and alive and int(alive.group(1)) >= 2:
                seen["trials"] = trials
                seen["text"] = text
                page.screenshot(path=str(shots / "ray-dashboard-actors.png"), full_page=True)
                break
            elif not seen["text"]:
                seen["last"] = text
                page.screenshot(path=str(shots / "ray-dashboard-last-try.png"))
    finally:
        ctx.close()
    return seen


@pytest.fixture(scope="module")
def search(browser, tmp_path_factory):
    """The smoke search as a user starts it (tune_mkd.py, with its Ray dashboard), watched on
    the dashboard while it runs; then its record."""
    work = tmp_path_factory.mktemp("browser")
    shots = _shots(work)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    hold = work / "trial-hold.mark"  # the first trial waits at its first epoch for the watcher
    env.update({faults.ENV: "trial:hold", faults.MARK_ENV: str(hold)})
    log = work / "search.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "tune_mkd.py"), "--preset", "smoke", "--tracking-uri", uri,
             "--set", "search.num_samples=4", "--set", f"search.register_model={MODEL}"],
            cwd=work, stdout=f, stderr=subprocess.STDOUT, env=env, process_group=0)
    try:
        url = None
        deadline = time.time() + 120
        while url is None and time.time() < deadline and proc.poll() is None:
            m = re.search(r"\[ray\] dashboard: (http://[0-9.:]+)", log.read_text())
            url = m.group(1) if m else None
            time.sleep(0.5)
        assert url, "no dashboard address printed:\n" + log.read_text()[-3000:]
        seen = _watch_dashboard(browser, url, proc, shots)
        Path(f"{hold}.release").touch()
        proc.wait(timeout=400)
    finally:  # stopping the driver stops a trial still held with it
        _stop(proc)
    out = log.read_text()
    assert proc.returncode == 0, out[-3000:]
    return {"work": work, "uri": uri, "log": out, "dashboard": seen, "shots": shots}


@pytest.fixture(scope="module")
def ui(search):
    """`distillray ui` on the search's store, on a free port."""
    port = _free_port()
    work = search["work"]
    log = work / "ui.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "distillray"), "ui", "--tracking-uri",
             search["uri"], "--port", str(port)],
            cwd=work, stdout=f, stderr=subprocess.STDOUT, process_group=0)
    base = f"http://127.0.0.1:{port}"
    try:
        # a guard against a UI that never starts, not a timing (see test_search_integration)
        wait_for_health(base, proc, 300, "distillray ui",
                        lambda: ":\n" + log.read_text()[-2000:])
        yield base
    finally:
        _stop(proc)


def test_ray_dashboard_lists_the_teacher_actor_and_the_trials(search):
    seen = search["dashboard"]
    assert seen["teacher"] and seen["trials"], \
        "the Actors page never listed the teacher and a trial:\n" + seen.get("last", "")
    assert "TeacherWorker" in seen["text"] and "_trial" in seen["text"]
    assert (search["shots"] / "ray-dashboard-actors.png").stat().st_size > 10_000


def test_search_ends_with_the_next_steps(search):
    out = search["log"]
    assert "[next] what to do now:" in out
    # the store is the working directory's mlflow.db, the default: no --tracking-uri needed
    assert re.search(r"distillray ui +# then http://127\.0\.0\.1:5000/#/experiments/\d+/runs"
                     r"\?workflowType=machine_learning", out), out[-2000:]
    assert "distillray best --search smoke" in out
    assert "distillray export --search smoke" in out
    assert f"mlflow models serve -m models:/{MODEL}/1 --env-manager local" in out


def test_mlflow_ui_lists_the_search_its_trials_and_the_registered_model(search, ui, browser):
    from mlflow.tracking import MlflowClient

    shots = search["shots"]
    client = MlflowClient(search["uri"])
    exp = client.get_experiment_by_name("distillray")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("distillray.kind") == "search")
    trials = sorted(r.info.run_name for r in runs if r.data.tags.get("distillray.kind") == "trial")
    assert len(trials) == 4

    ctx = browser.new_context(viewport={"width": 1800, "height": 1000})
    page = ctx.new_page()
    try:
        # the address the search printed: the experiment's runs, in the "Model training" view
        m = re.search(r"then (http://127\.0\.0\.1:5000/\S+)", search["log"])
        assert m, search["log"][-2000:]
        page.goto(m.group(1).replace("http://127.0.0.1:5000", ui))
        page.wait_for_selector("text=smoke", timeout=60000)
        assert page.get_by_text("Model training").count() and \
            not page.get_by_text("Token Usage").count(), "opened on the GenAI overview"
        # the trials sit under the search run: expand it, then every trial is listed
        page.locator("button[data-component-id$='runnamecellrenderer.tsx_46']").first.click()
        for name in trials:
            page.wait_for_selector(f"text={name}", timeout=30000)
        page.screenshot(path=str(shots / "mlflow-runs.png"))
        body = page.inner_text("body")
        assert "teacher-sst2" in body
        # dev_score among the table's metric columns
        page.get_by_role("button", name="Columns").click()
        page.wait_for_selector("text=dev_score", timeout=15000)
        page.keyboard.press("Escape")

        # the trials compared: MLflow's compare page with its parallel-coordinates plot
        ids = ",".join(f'"{r.info.run_id}"' for r in runs
                       if r.data.tags.get("distillray.kind") == "trial")
        page.goto(f"{ui}/#/compare-runs?runs=[{ids}]&experiments=[\"{exp.experiment_id}\"]")
        page.wait_for_selector("text=Parallel Coordinates Plot", timeout=60000)
        page.wait_for_timeout(3000)
        page.screenshot(path=str(shots / "mlflow-trials-compared.png"), full_page=True)
        body = page.inner_text("body")
        # the plot's defaults: the searched parameters against the trials' best dev score
        assert "sampled.student.dropout" in body and "sampled.train.alpha" in body, body[:3000]
        metrics_box = page.locator("text=Metrics:").locator("xpath=..")
        assert "best_dev_score" in metrics_box.inner_text(), metrics_box.inner_text()

        # the Pareto plot artifact of the search run
        page.goto(f"{ui}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}/artifacts")
        page.get_by_text("pareto.png").first.click(timeout=60000)
        page.wait_for_function("() => [...document.images].some(i => i.naturalWidth > 300)",
                               timeout=30000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(shots / "mlflow-pareto.png"))

        # the registered model on the Models page
        page.goto(f"{ui}/#/models?workflowType=machine_learning")
        page.wait_for_selector(f"text={MODEL}", timeout=60000)
        page.screenshot(path=str(shots / "mlflow-models.png"))
    except Exception:
        page.screenshot(path=str(shots / "mlflow-failure.png"))
        raise
    finally:
        ctx.close()
