"""A search's output written to a file, as ``make demo 2>&1 | tee demo.log`` leaves it: the
smoke search run by its command with stdout and stderr in a file. Tune prints none of its tables
there (no trial table, no boxed config or result per trial); each trial has exactly one line when
it starts and one when it ends, saying how it ended; Ray's worker lines carry no colour codes;
and the whole log stays within a size that grows with the trials, not with time."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.runtime import tracking

# slow: a whole smoke search as a subprocess (about 2 minutes), which the default suite's budget
# does not hold; trial_lines' own logic is covered by tests/test_progress_output.py
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[1]
SAMPLES = 3
# what a trial's log costs, and the rest of a search's (data, Ray, teacher, labels, the results
# table, the next steps): measured about 0.7 KB and 4.6 KB on the smoke preset. With Tune's
# output a trial cost about 3.1 KB (its config and result boxed), and its trial table about 1 KB
# a copy, so 3 trials came to 16 KB: well over this bound
PER_TRIAL, FIXED = 1_200, 8_000
ENDING = re.compile(r"^\[trial\] (\w+) (finished at report \d+/\d+|finished early at report "
                    r"\d+/\d+ \(patience\)|stopped at rung \d+ \(report \d+/\d+\)|"
                    r"stopped at report \d+/\d+): dev_score \d\.\d{4} \(best \d\.\d{4}\)")


def test_search_log_in_a_file_has_one_line_per_trial_start_and_end_and_no_tune_tables(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, str(REPO / "tune_mkd.py"), "--preset", "smoke",
           "--set", f"search.num_samples={SAMPLES}", "--set", "teacher.epochs=2",
           "--tracking-uri", uri, "--work-root", str(tmp_path / ".distillray")]
    # the defaults a user meets: none of the switches the output depends on set from outside
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "TQDM_DISABLE", "RAY_COLOR_PREFIX",
                        "HF_HUB_DISABLE_PROGRESS_BARS", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")}
    path = tmp_path / "search.log"
    with open(path, "w") as out:
        res = subprocess.run(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, timeout=850)
    log = path.read_text(errors="replace")
    assert res.returncode == 0, log[-6000:]
    lines = log.splitlines()

    # Tune's tables: the periodic trial table, and each trial's config and result in a box
    for tune_line in ("Trial status:", "started with configuration", "completed after",
                      "Logical resource usage"):
        assert not any(tune_line in ln for ln in lines), tune_line
    assert not [ln for ln in lines if ln.startswith(("│ Trial", "│ _trial"))]
    assert "\r" not in log  # no progress-bar frames
    assert "\x1b[36m(" not in log  # Ray's worker-line prefix without colour codes
    assert not any("Running in local mode" in ln for ln in lines)

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("distillray")
    trials = {r.data.tags[tracking.TAG_TRIAL] for r in tracking.find_runs(
        client, exp.experiment_id, {tracking.TAG_SEARCH: "smoke", tracking.TAG_KIND: "trial"})}
    assert len(trials) == SAMPLES
    for tid in trials:
        starts = [ln for ln in lines if ln.startswith(f"[trial] {tid} started (")]
        ends = [ln for ln in lines if ENDING.match(ln) and ENDING.match(ln).group(1) == tid]
        assert len(starts) == 1 and len(ends) == 1, (tid, starts, ends)
        assert re.search(r"train\.lr=[0-9.e-]+", starts[0]), starts[0]  # its sampled values
    # the closing line on the whole search
    assert any(ln.startswith(f"[search] {SAMPLES} of {SAMPLES} trials ended") for ln in lines)

    assert len(log.encode()) < FIXED + PER_TRIAL * SAMPLES, log
