"""benchmarks/search_speedup.py end to end on the smoke preset (generated data, tiny teacher)."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_search_against_its_own_trials_run_alone_on_the_smoke_preset(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "search_speedup.py"), "--preset", "smoke",
         "--set", "search.num_samples=2", "--baseline", "both", "--work-root", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir() and p.name[:2] == "20"]
    search = json.loads((run_dir / "search.json").read_text())
    alone = [json.loads((run_dir / f"alone-{i}.json").read_text()) for i in range(2)]
    centre = json.loads((run_dir / "centre.json").read_text())
    assert len(search["trials"]) == 2
    for trial, solo in zip(search["trials"], alone):
        # the baseline is the search's own configuration, run to its last epoch
        assert len(solo["trials"]) == 1 and solo["trials"][0]["status"] == "DONE"
        assert solo["trials"][0]["config"] == trial["config"]
    total = sum(a["seconds"] for a in alone)
    ratio = float(re.search(r"ratio search / \(2 full trials, the search's own configurations\): "
                            r"([\d.]+)", out).group(1))
    assert ratio == pytest.approx(search["seconds"] / total, abs=0.002)
    ratio_c = float(re.search(r"ratio search / \(2 x the centre trial\): ([\d.]+)", out).group(1))
    assert ratio_c == pytest.approx(search["seconds"] / (2 * centre["seconds"]), abs=0.002)
    # each side ran in its own fresh work root, sharing only the teacher
    for side in ("search", "alone-0", "alone-1", "centre"):
        assert (run_dir / side / "teachers").resolve() == (tmp_path / "teachers").resolve()
        assert (run_dir / side / "bundles").is_dir()
