"""benchmarks/search_speedup.py end to end on the smoke preset (generated data, tiny teacher)."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_search_against_full_trials_on_the_smoke_preset(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "search_speedup.py"), "--preset", "smoke",
         "--set", "search.num_samples=2", "--work-root", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    full_s = float(re.search(r"one full trial .*?: (\d+) s", out).group(1))
    search_s = float(re.search(r"2-trial search .*?: (\d+) s", out).group(1))
    ratio = float(re.search(r"ratio search / \(2 x full trial\): ([\d.]+)", out).group(1))
    assert ratio == pytest.approx(search_s / (2 * full_s), abs=0.02)
    # each side ran in its own fresh work root, sharing only the teacher
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir() and p.name[:2] == "20"]
    full = json.loads((run_dir / "full.json").read_text())
    search = json.loads((run_dir / "search.json").read_text())
    assert len(full["trials"]) == 1 and full["trials"][0]["status"] == "DONE"
    assert len(search["trials"]) == 2
    for side in ("full", "search"):
        assert (run_dir / side / "teachers").resolve() == (tmp_path / "teachers").resolve()
        assert (run_dir / side / "soft_labels").is_dir() or (run_dir / side / "bundles").is_dir()
