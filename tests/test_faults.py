"""``faults.point``: a no-op unless armed; fires once per run; the hold mode waits for release."""
from __future__ import annotations

import threading
from pathlib import Path

from orchestrator.runtime import faults


def test_hold_waits_at_the_point_until_released_and_fires_once(tmp_path, monkeypatch):
    mark = tmp_path / "mark"
    monkeypatch.setenv(faults.ENV, "trial:hold")
    monkeypatch.setenv(faults.MARK_ENV, str(mark))
    faults.point("labeling")  # another point: returns at once, nothing written
    assert not mark.exists()

    held = threading.Thread(target=faults.point, args=("trial",), daemon=True)
    held.start()
    held.join(timeout=1.0)
    assert held.is_alive() and mark.read_text().startswith("trial ")
    faults.point("trial")  # fired already in this run: the second one goes on
    Path(f"{mark}.release").touch()
    held.join(timeout=10.0)
    assert not held.is_alive(), "still held after the release file was written"


def test_unarmed_points_do_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    monkeypatch.setenv(faults.MARK_ENV, str(tmp_path / "mark"))
    faults.point("trial")
    assert not (tmp_path / "mark").exists()
