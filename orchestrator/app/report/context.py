"""One report call's state (``_Report``): the MLflow store, the parent run, Ray."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from orchestrator.app.report.rows import TAG_CONFIG, TAG_REPORT, TAG_ROW, TAG_TASK, Row
from orchestrator.config import ExperimentConfig
from orchestrator.runtime import tracking


class _Report:
    """State of one report call: the store, the parent run, Ray (started only when needed)."""

    def __init__(self, cfg: ExperimentConfig, name: str, address: str | None, log: Callable):
        from mlflow.tracking import MlflowClient

        self.cfg, self.name, self.address, self.log = cfg, name, address, log
        self.uri = tracking.resolve_uri(cfg.tracking.uri)
        tracking.check_reachable(self.uri)
        self.client = MlflowClient(self.uri)
        work_root = Path(cfg.work_root)
        self.exp_id = tracking.experiment_id_for(self.client, cfg)
        self.storage = str(work_root / "report-runs")
        Path(self.storage).mkdir(parents=True, exist_ok=True)
        self.ray_ready = False
        self.parent = ""
        self.t0 = time.time()

    def note(self, msg: str) -> None:
        self.log(f"[report +{time.time() - self.t0:.0f}s] {msg}")

    def ensure_ray(self, cfg: ExperimentConfig) -> None:
        if self.ray_ready:
            return
        from orchestrator.runtime.ray_runtime import check_budget, init_ray
        resources = init_ray(self.address, log=self.log)
        check_budget(cfg, resources)
        self.ray_ready = True

    def find(self, kind: str, row: str, task: str, key: str) -> list:
        return tracking.find_runs(self.client, self.exp_id, {
            tracking.TAG_KIND: kind, TAG_REPORT: self.name, TAG_ROW: row, TAG_TASK: task,
            TAG_CONFIG: key})

    def finished(self, kind: str, row: str, task: str, key: str, close_unfinished: bool = True):
        """The newest FINISHED run of this kind and key. ``close_unfinished``: runs a killed
        call left RUNNING are closed as failed (not for training runs, which resume)."""
        runs = self.find(kind, row, task, key)
        for r in runs:  # an earlier call that died mid-run: close it, it is not reused
            if close_unfinished and r.info.status in ("RUNNING", "SCHEDULED"):
                tracking.end_run(self.client, r.info.run_id, False,
                                 "interrupted: a later report call found it still running")
        done = [r for r in runs if r.info.status == "FINISHED"]
        return max(done, key=lambda r: r.info.start_time) if done else None

    def resume_or_start(self, kind: str, row: Row, task: str, key: str,
                        extra: dict | None = None) -> tuple[str, bool]:
        """(run id, resumed): the newest unfinished run with this key, reopened (a killed or
        failed call's: its metrics so far stay, the training resumes from its checkpoint), or
        a new run."""
        left = [r for r in self.find(kind, row.id, task, key) if r.info.status != "FINISHED"]
        if not left:
            return self.start(kind, row, task, key, extra), False
        run = max(left, key=lambda r: r.info.start_time)
        rid = run.info.run_id
        self.client.update_run(rid, status="RUNNING")
        n = int(run.data.tags.get("distillray.resumed", "0")) + 1
        self.client.set_tag(rid, "distillray.resumed", str(n))
        for k, v in (extra or {}).items():
            self.client.set_tag(rid, k, v)
        return rid, True

    def start(self, kind: str, row: Row, task: str, key: str, extra: dict | None = None) -> str:
        return tracking.start_run(self.client, self.exp_id, f"{self.name}-{row.id}-{task}",
                                  {tracking.TAG_KIND: kind, TAG_REPORT: self.name,
                                   TAG_ROW: row.id, TAG_TASK: task, TAG_CONFIG: key,
                                   "distillray.row_num": row.num, **(extra or {})}, self.parent)
