"""Checkpoints of a student trained in its Tune trial's own process (``train.num_workers: 0``,
Ray Train's local mode), kept as Ray Train keeps its workers' (``num_to_keep=1`` by dev score).

Local mode skips Train's controller and worker actors, and with them Train's checkpoint manager,
so this does that one job: under ``<storage>/<run name>/`` each report's checkpoint goes to
``checkpoint_<report>/``; then ``state.json``, replaced atomically, names the latest and the best
(by dev score) of them; then the checkpoints it no longer names are deleted. A process killed at
any point leaves ``state.json`` naming complete checkpoints, so a resumed trial (a Tune pause, a
retry, a restored search) starts from the latest report it recorded, and the trial logs the best
student at its end whichever life reached it. ``storage`` is a path or an fsspec URI, like Tune's.
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import fsspec

from orchestrator.runtime.keys import is_local_fs, write_bytes_atomic

STATE_FILE = "state.json"


class TrialCheckpoints:
    def __init__(self, storage: str, name: str):
        self.root = f"{storage.rstrip('/')}/{name}"
        self.fs, self.path = fsspec.core.url_to_fs(self.root)

    def state(self) -> dict:
        """``{"latest": dir, "report": n, "best": dir, "best_score": s}``, or ``{}`` before the
        first save (or when ``state.json`` is unreadable: the trial then starts afresh)."""
        try:
            state = json.loads(self.fs.cat_file(f"{self.path}/{STATE_FILE}"))
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) and "latest" in state else {}

    def save(self, local_dir: str | Path, report: int, score: float) -> str:
        """Persist ``local_dir`` as the checkpoint of ``report`` (0-based), scored ``score``;
        returns where it now is (a path or URI, as ``storage`` was given)."""
        name = f"checkpoint_{report:06d}"
        dest = f"{self.path}/{name}"
        if self.fs.exists(dest):  # left by a life that died before naming it
            self.fs.rm(dest, recursive=True)
        if is_local_fs(self.fs):
            Path(self.path).mkdir(parents=True, exist_ok=True)
            shutil.copytree(local_dir, dest)
        else:
            self.fs.put(str(local_dir), dest, recursive=True)
        old = self.state()
        best, best_score = old.get("best"), old.get("best_score")
        if best is None or _better(score, best_score):
            best, best_score = name, score
        write_bytes_atomic(self.fs, f"{self.path}/{STATE_FILE}", json.dumps(
            {"latest": name, "report": report, "best": best,
             "best_score": None if best_score is None or math.isnan(best_score) else best_score}
        ).encode())
        for d in self.fs.ls(self.path, detail=False):
            base = d.rstrip("/").rsplit("/", 1)[-1]
            if base.startswith("checkpoint_") and base not in (name, best):
                self.fs.rm(d, recursive=True)
        return f"{self.root}/{name}"

    @contextlib.contextmanager
    def local(self, which: str = "latest") -> Iterator[Path | None]:
        """A local directory holding the ``"latest"`` or ``"best"`` (by dev score) checkpoint,
        None before the first save. Remote storage: a temporary copy, removed on exit."""
        name = self.state().get(which)
        if not name:
            yield None
            return
        src = f"{self.path}/{name}"
        if is_local_fs(self.fs):
            yield Path(src)
            return
        with tempfile.TemporaryDirectory(prefix="distillray-ckpt-") as tmp:
            self.fs.get(src, f"{tmp}/{name}", recursive=True)
            yield Path(tmp) / name


def _better(score: float, best: float | None) -> bool:
    if score is None or math.isnan(score):
        return False
    return best is None or score > best
