"""``distillray gc``: what the work root (and Ray's temporary folder) holds that nothing needs.

Listed, with sizes, and removed only when asked (``--yes``):

- **unreferenced** fine-tuned teachers (``teachers/<key>``) and training bundles
  (``bundles/<key>``): no run of the tracking store names them (a teacher run's
  ``distillray.teacher_key`` tag, a trial's ``distillray.bundle`` tag, a teacher a kept bundle
  was labeled by), and Tune states (``tune/<name>``, ``<name>.scheduler``, ``<name>-<trial>``,
  ``<name>.fingerprint.json``) of searches the store does not know. Registered models are runs
  of the store, so what they came from is kept.
- **partial checkpoints**: teachers' ``teachers/.partial/<key>`` and unfinished transfer sets'
  ``transfer/<key>.parts`` (what a killed run resumes from; abandoned once its config is gone).
- **temporary leftovers** of atomic writes killed midway (``.<name>.tmp-<id>``).
- **old Ray session folders** (``<ray temp>/session_*``) of this user, but the latest.

Anything touched in the last ``older_than_h`` hours is kept, whatever it is: it may belong to a
search that is running now (its teacher and bundle are named in MLflow only once built).
Transfer sets and soft labels are shared by every setting with the same data and teacher and
are not collected by reference; the tracking store must answer, or nothing is listed.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

TMP_MARK = ".tmp-"


class GcError(RuntimeError):
    """gc cannot tell what is referenced (no tracking store, no work root)."""


@dataclass
class Entry:
    kind: str  # unreferenced teacher | unreferenced bundle | unknown search state | ...
    path: Path
    size: int


def size_of(path: Path) -> int:
    """Bytes under ``path`` (links not followed)."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(d, f)).st_size
            except OSError:
                pass
    return total


def newest_mtime(path: Path) -> float:
    """The latest modification time of ``path`` and what it holds (one level down for folders:
    a new file or checkpoint shows there)."""
    times = [path.lstat().st_mtime]
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            try:
                times.append(child.lstat().st_mtime)
            except OSError:
                pass
    return max(times)


def references(uri: str) -> dict[str, set[str]]:
    """Teacher keys, bundle keys and search names the runs of the tracking store at ``uri`` name
    (every experiment, deleted runs too: a run in MLflow's trash can still be restored)."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    from orchestrator.runtime import tracking
    from orchestrator.runtime.redact import redact

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise GcError(f"no tracking store at {redact(uri)}: gc reads what is in use from the "
                      "runs there; pass --tracking-uri (or $MLFLOW_TRACKING_URI) for the store "
                      "your searches log to")
    try:
        tracking.check_reachable(uri)
        client = MlflowClient(uri)
        exps = client.search_experiments(view_type=ViewType.ALL)
        runs = []
        for exp in exps:
            token = None
            while True:
                page = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL,
                                          max_results=1000, page_token=token)
                runs += list(page)
                token = page.token
                if not token:
                    break
    except Exception as e:  # noqa: BLE001 - without the record, nothing may be collected
        raise GcError(f"cannot read the tracking store {redact(uri)} ({redact(str(e))}); gc "
                      "lists nothing without it") from None
    refs: dict[str, set[str]] = {"teachers": set(), "bundles": set(), "searches": set()}
    for r in runs:
        tags = r.data.tags
        if "distillray.teacher_key" in tags:
            refs["teachers"].add(tags["distillray.teacher_key"])
        if "distillray.bundle" in tags:
            refs["bundles"].add(tags["distillray.bundle"])
        if tracking.TAG_SEARCH in tags:
            refs["searches"].add(tags[tracking.TAG_SEARCH])
    return refs


def ray_temp_dir() -> Path:
    """Where a local Ray keeps its session folders: ``$RAY_TMPDIR/ray``, else ``/tmp/ray``."""
    return Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray"


def collect(work_root: str | Path, uri: str, older_than_h: float = 24.0,
            ray_tmp: str | Path | None = None, now: float | None = None) -> list[Entry]:
    """What gc would remove (nothing is removed here)."""
    root = Path(work_root)
    if not root.is_dir():
        raise GcError(f"work root {root} does not exist (--work-root / $DISTILLRAY_WORK_ROOT)")
    refs = references(uri)
    cutoff = (time.time() if now is None else now) - older_than_h * 3600
    out: list[Entry] = []

    def old(p: Path) -> bool:
        try:
            return newest_mtime(p) < cutoff
        except OSError:
            return False

    def add(kind: str, p: Path) -> None:
        if old(p):
            out.append(Entry(kind, p, size_of(p)))

    # temporary leftovers anywhere under the root (not inside an entry already listed)
    temps = sorted(p for p in root.rglob(f"*{TMP_MARK}*") if p.name.startswith("."))
    seen: list[Path] = []
    for p in temps:
        if not any(q in p.parents for q in seen):
            add("temporary leftover", p)
            seen.append(p)
    teachers = root / "teachers"
    bundles = root / "bundles"
    kept_bundles = {p.name for p in _children(bundles)} & refs["bundles"]
    teacher_refs = set(refs["teachers"])
    for key in kept_bundles:  # the teachers a kept bundle was labeled by
        try:
            meta = json.loads((bundles / key / "meta.json").read_text())
            teacher_refs |= {t.get("key") for t in (meta.get("teachers") or {}).values()}
        except (OSError, ValueError, AttributeError):
            pass
    for p in _children(teachers):
        if p.name not in teacher_refs:
            add("unreferenced teacher", p)
    for p in _children(teachers / ".partial"):
        add("partial checkpoint", p)
    for p in _children(bundles):
        if p.name not in refs["bundles"]:
            add("unreferenced bundle", p)
    for p in _children(root / "transfer", dirs_only=True):
        if p.name.endswith(".parts"):
            add("partial checkpoint", p)
    for p in _children(root / "tune"):
        # <name>/ (Tune), <name>.scheduler/, <name>.fingerprint.json, <name>-<trial id>/ (Train)
        if not any(p.name == s or p.name.startswith((f"{s}.", f"{s}-"))
                   for s in refs["searches"]):
            add("unknown search state", p)
    ray_dir = Path(ray_tmp) if ray_tmp is not None else ray_temp_dir()
    latest = ray_dir / "session_latest"
    current = latest.resolve() if latest.is_symlink() else None
    for p in _children(ray_dir, dirs_only=True):
        if p.name.startswith("session_") and p.name != "session_latest" \
                and p.resolve() != current and p.lstat().st_uid == os.getuid():
            add("old Ray session", p)
    return sorted(out, key=lambda e: (e.kind, str(e.path)))


def _children(d: Path, dirs_only: bool = False) -> list[Path]:
    """Entries of ``d`` but hidden ones and temporaries (listed on their own)."""
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if not p.name.startswith(".") and TMP_MARK not in p.name
                  and (p.is_dir() or not dirs_only))


def human(n: int) -> str:
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"


def run_gc(work_root: str | Path, uri: str, remove: bool = False, older_than_h: float = 24.0,
           ray_tmp: str | Path | None = None, log: Callable = print) -> list[Entry]:
    """List what :func:`collect` finds, with sizes; remove it when ``remove``."""
    from orchestrator.runtime.redact import redact

    entries = collect(work_root, uri, older_than_h, ray_tmp)
    log(f"[gc] work root {work_root}; references from {redact(uri)}; keeping anything touched "
        f"in the last {older_than_h:g} h")
    width = max((len(e.kind) for e in entries), default=0)
    for e in entries:
        log(f"  {e.kind:<{width}}  {human(e.size):>10}  {e.path}")
    total = sum(e.size for e in entries)
    if not entries:
        log("[gc] nothing to remove")
        return entries
    if not remove:
        log(f"[gc] {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {human(total)}: "
            "dry run, nothing removed; `distillray gc --yes` removes them")
        return entries
    for e in entries:
        if e.path.is_dir() and not e.path.is_symlink():
            shutil.rmtree(e.path, ignore_errors=True)
        else:
            e.path.unlink(missing_ok=True)
    log(f"[gc] removed {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {human(total)}")
    return entries
