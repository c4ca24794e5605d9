"""Named fault points: where ``scripts/fault_matrix.py`` kills a search to prove it resumes.

A point is a no-op unless ``$DISTILLRAY_FAULT`` names it and ``$DISTILLRAY_FAULT_MARK`` names a
marker file (both set by the fault matrix; Ray workers inherit them). The first process to reach
the point creates the marker (once per run: a point fires once), then either holds there until
the fault matrix SIGKILLs the driver with everything it started (``name``), SIGKILLs itself
(``name:self``: a teacher actor or a trial's process dying on its own), or holds until a file
``<marker>.release`` exists (``name:hold``: a test watching the run from outside, e.g. in the
Ray dashboard, sees it at that point however slowly it looks, then lets it go on)."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ENV, MARK_ENV = "DISTILLRAY_FAULT", "DISTILLRAY_FAULT_MARK"


def point(name: str) -> None:
    spec, mark = os.environ.get(ENV), os.environ.get(MARK_ENV)
    if not spec or not mark:
        return
    want, _, mode = spec.partition(":")
    if want != name:
        return
    try:
        fd = os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # fired already in this run
    os.write(fd, f"{name} {os.getpid()}\n".encode())
    os.close(fd)
    if mode == "self":
        os.kill(os.getpid(), signal.SIGKILL)
    release = Path(f"{mark}.release") if mode == "hold" else None
    # held until the fault matrix kills the driver's whole tree, or (hold) until released
    while release is None or not release.exists():
        time.sleep(0.2 if release else 1)


def descendants(pid: int) -> set[int]:
    """Every process ``pid`` started, and theirs (read from /proc; Linux)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill_tree(proc, timeout: float = 60.0) -> None:
    """SIGKILL a driver started in its own process group (``subprocess.Popen(process_group=0)``)
    with every process it started: Ray's workers run in sessions of their own, so the process
    group alone would leave them to notice their raylet is gone. Waits until all are gone.

    A process group, not a session: a new session is a new scheduler autogroup on Linux, and on
    a machine whose cores other jobs hold, a child there starts several times slower than one
    in its parent's session."""
    pids = descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=timeout)
    deadline = time.time() + timeout
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.5)
