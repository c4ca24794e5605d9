"""Progress output a person can read in a log file: no tqdm carriage-return frames when stderr
is not a terminal, one line per stage at intervals (percent, rate, time left), and a bar only
on a terminal."""
from __future__ import annotations

import io
import os
import re

import torch

from orchestrator.config import TeacherConfig
from orchestrator.runtime.progress import StageProgress, on_terminal
from orchestrator.stages.teacher import FinetuneRun


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _fit(tmp_path, every_s: float) -> dict:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(8, 4), torch.randn(8, 1)

    def step(m, batch):
        return torch.nn.functional.mse_loss(m(x[batch]), y[batch])

    run = FinetuneRun(tmp_path / "partial", TeacherConfig(epochs=1.0, checkpoint_minutes=60.0),
                      total=6, steps_per_epoch=3, desc="teacher toy", every_s=every_s)
    (tmp_path / "partial").mkdir()
    return run.fit(model, [[0, 1], [2, 3], [4, 5], [6, 7], [0, 2], [1, 3]], step,
                   lambda m: {"score": 0.5})


def test_teacher_finetune_in_a_log_file_writes_lines_not_bar_frames(tmp_path, capsys):
    assert not on_terminal()  # pytest's capture: what a log file sees
    info = _fit(tmp_path, every_s=0.0)
    out, err = capsys.readouterr()
    assert info["steps"] == 6
    assert "\r" not in out + err  # no tqdm frames anywhere
    assert err == ""
    lines = [ln for ln in out.splitlines() if re.search(r"\d+/6 steps", ln)]
    # one line per step here (every_s=0); percent, rate, time left, loss
    assert len(lines) == 6, out
    pat = re.compile(r"^\[teacher\] teacher toy: (\d)/6 steps \((\d+)%\), [0-9.,e+-]+/s, "
                     r"about \d+s left; loss \d+\.\d{4}$")
    for n, ln in enumerate(lines, 1):
        m = pat.match(ln)
        assert m, ln
        assert int(m.group(1)) == n and int(m.group(2)) == round(100 * n / 6)
    assert "[teacher] teacher toy: 6 steps" in out  # the closing line


def test_teacher_finetune_lines_are_spaced_by_every_s(tmp_path, capsys):
    _fit(tmp_path, every_s=3600.0)
    out, _ = capsys.readouterr()
    assert not re.search(r"\d+/6 steps \(", out)  # a short run: no progress line before the end
    assert "dev score 0.5000" in out and "[teacher] teacher toy: 6 steps" in out


def test_bar_only_on_a_terminal_and_the_closing_line_either_way():
    now = [0.0]
    tty, lines = _Tty(), []
    p = StageProgress("label", "sst2", 100, log=lines.append, every_s=0.0, bar=True, stream=tty,
                      clock=lambda: now[0])
    for _ in range(4):
        now[0] += 1.0
        p.update(25, note="batch 32")
    p.finish()
    assert "\r" in tty.getvalue() and "[label] sst2" in tty.getvalue()  # the bar, on the tty
    assert lines == ["[label] sst2: 100/100 texts (100%), 25/s, done in 4s in this call"]

    plain, lines = io.StringIO(), []
    q = StageProgress("label", "sst2", 100, log=lines.append, every_s=0.0, bar=True,
                      stream=plain, clock=lambda: now[0])
    now[0] += 2.0
    q.update(50, note="batch 32")
    q.update(50)
    q.finish()
    assert plain.getvalue() == ""  # not a terminal: no bar
    assert lines == ["[label] sst2: 50/100 texts (50%), 25/s, about 2s left; batch 32",
                     "[label] sst2: 100/100 texts (100%), 50/s, about 0s left; batch 32",
                     "[label] sst2: 100/100 texts (100%), 50/s, done in 2s in this call"]


def test_rates_below_ten_a_second_keep_two_digits():
    now = [0.0]
    lines: list[str] = []
    p = StageProgress("teacher", "t", 100, unit="steps", log=lines.append, every_s=0.0,
                      clock=lambda: now[0])
    now[0] += 8.0
    p.update(3)
    assert lines == ["[teacher] t: 3/100 steps (3%), 0.38/s, about 4m19s left"]


def test_library_bars_are_off_in_a_log_file(monkeypatch):
    """Off a terminal, transformers' own bars ("Loading weights") are off in this process and
    tqdm's in the processes it starts (TQDM_DISABLE), and Ray prints its workers' line prefixes
    without colour codes; a user's TQDM_DISABLE=0 wins."""
    import subprocess
    import sys

    from transformers.utils import logging as hf_logging

    from orchestrator.runtime.progress import quiet_library_bars

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)  # restored afterwards
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)
    monkeypatch.setenv("TQDM_DISABLE", "0")
    hf_logging.enable_progress_bar()  # an earlier CLI call in this process may have turned it off
    quiet_library_bars()
    assert hf_logging.is_progress_bar_enabled() and os.environ["TQDM_DISABLE"] == "0"
    monkeypatch.delenv("TQDM_DISABLE")
    try:
        quiet_library_bars()  # pytest's capture: not a terminal
        assert not hf_logging.is_progress_bar_enabled()
        assert os.environ["RAY_COLOR_PREFIX"] == "0"  # Ray's worker-line prefix, uncoloured
        from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

        assert MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.get() is False
    finally:
        hf_logging.enable_progress_bar()
    child = subprocess.run(
        [sys.executable, "-c", "from tqdm import tqdm\nfor _ in tqdm(range(3)): pass"],
        capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert child.returncode == 0 and child.stderr == ""  # a Ray worker's bars: none


def test_tune_is_silent_in_a_log_file_and_trial_lines_report_the_search():
    """Off a terminal Tune prints nothing itself (verbose=0: no trial table, no boxed config or
    result per trial) and the search's own lines take over; on a terminal, Tune's output."""
    from orchestrator.config import SearchConfig, TrainConfig
    from orchestrator.search.search import tune_output
    from orchestrator.search.trial_lines import TrialLines

    s = SearchConfig(scheduler="asha", grace_period=1, reduction_factor=2)
    verbose, callbacks = tune_output(s, TrainConfig(epochs=4))  # pytest's capture: a file
    assert verbose == 0 and len(callbacks) == 1 and isinstance(callbacks[0], TrialLines)
    assert callbacks[0].total_reports == 4 and callbacks[0].rungs == [1, 2]
    none = tune_output(SearchConfig(scheduler="none"), TrainConfig(epochs=4))[1][0]
    assert none.rungs == []


def test_tune_keeps_its_own_output_on_a_terminal(monkeypatch):
    from orchestrator.config import SearchConfig, TrainConfig
    from orchestrator.runtime import progress
    from orchestrator.search.search import tune_output

    monkeypatch.setattr(progress, "on_terminal", lambda stream=None: True)
    assert tune_output(SearchConfig(), TrainConfig()) == (1, [])


class _Trial:
    """What TrialLines reads of a Tune trial."""

    def __init__(self, tid: str, config: dict, status: str = "PENDING"):
        self.trial_id, self.config, self.status = tid, config, status
        self.last_result: dict = {}
        self.num_failures, self.max_failures = 0, 1
        self.error_file, self.error = None, None

    def get_error(self):
        return self.error


def _lines(**kw):
    from orchestrator.search.trial_lines import TrialLines

    now, out = [0.0], []
    lines = TrialLines("dev_score", "max", 3, [1, 2], log=out.append, clock=lambda: now[0], **kw)
    lines.setup(total_num_samples=3)
    return lines, now, out


def test_trial_lines_one_start_and_one_end_line_per_trial_with_how_it_ended():
    lines, now, out = _lines()
    a = _Trial("aaaa0001", {"train.lr": 0.0013367, "student.hidden_size": 150}, "RUNNING")
    b = _Trial("bbbb0002", {"train.lr": 0.002, "student.hidden_size": 300})
    c = _Trial("cccc0003", {"train.lr": 0.0005, "student.hidden_size": 300})
    trials = [a]
    lines.on_trial_start(0, trials, a)
    a.last_result = {"report": 3, "dev_score": 0.82, "best_dev_score": 0.8225,
                     "latency_ms": 6.87086, "time_total_s": 405.0}
    lines.on_trial_result(0, trials, a, a.last_result)
    lines.on_trial_complete(0, trials, a)  # RUNNING still, as Tune calls back
    a.status = "TERMINATED"
    trials.append(b)
    b.status = "RUNNING"
    lines.on_trial_start(0, trials, b)
    b.last_result = {"report": 1, "dev_score": 0.7844, "best_dev_score": 0.7844,
                     "time_total_s": 104.4, "done": True}  # Tune's mark: the scheduler stops it
    lines.on_trial_result(0, trials, b, b.last_result)
    lines.on_trial_complete(0, trials, b)
    b.status = "TERMINATED"
    trials.append(c)
    c.status = "RUNNING"
    lines.on_trial_start(0, trials, c)
    c.last_result = {"report": 2}
    c.error = "Failure # 1 (occurred at ...)\nTraceback ...\n  File x\nRuntimeError: boom\n"
    c.num_failures = 1  # Tune counts the failure before it calls back
    lines.on_trial_recover(0, trials, c)  # retried: Tune starts it again
    lines.on_trial_start(0, trials, c)
    c.num_failures, c.status, c.error_file = 2, "ERROR", "/x/error.txt"
    lines.on_trial_error(0, trials, c)
    lines.on_experiment_end(trials)
    assert out == [
        "[trial] aaaa0001 started (1 of 3): train.lr=0.00134, student.hidden_size=150",
        "[trial] aaaa0001 finished at report 3/3: dev_score 0.8200 (best 0.8225), "
        "latency_ms 6.87, 6m45s",
        "[trial] bbbb0002 started (2 of 3): train.lr=0.002, student.hidden_size=300",
        "[trial] bbbb0002 stopped at rung 1 (report 1/3): dev_score 0.7844 (best 0.7844), 1m44s",
        "[trial] cccc0003 started (3 of 3): train.lr=0.0005, student.hidden_size=300",
        "[trial] cccc0003 failed at report 2/3: RuntimeError: boom; retrying (failure 1 of 1 "
        "allowed)",
        "[trial] cccc0003 restarted at report 2/3",
        "[trial] cccc0003 error at report 2/3: RuntimeError: boom (error file: /x/error.txt)",
        "[search] 3 of 3 trials ended (1 stopped early, 1 failed), 0 running, 0 to start; "
        "best dev_score 0.8225 (trial aaaa0001); 0s",
    ]


def test_trial_lines_endings():
    lines, _, _ = _lines()
    assert lines.ending({"report": 2}, stopped=False) == "finished early at report 2/3 (patience)"
    assert lines.ending({"report": 2}, stopped=True) == "stopped at rung 2 (report 2/3)"
    assert lines.ending({"report": 3}, stopped=True) == "finished at report 3/3"
    lines.rungs = [1]
    assert lines.ending({"report": 2}, stopped=True) == "stopped at report 2/3"
    assert lines.ending({"report": 3, "replayed_from_mlflow": 1.0}, stopped=False).startswith(
        "finished (its MLflow run's outcome")
    assert lines.ending({}, stopped=False) == "ended before its first report"


def test_a_trial_stopped_while_it_waits_at_a_rung_is_stopped_not_finished():
    """The synchronous first rung pauses a trial there; one the rung drops is stopped while
    paused, with no result marked done."""
    lines, _, out = _lines()
    t = _Trial("aaaa0001", {"train.lr": 0.001}, "RUNNING")
    lines.on_trial_start(0, [t], t)
    t.last_result = {"report": 1, "dev_score": 0.5, "best_dev_score": 0.5}
    lines.on_trial_result(0, [t], t, t.last_result)
    t.status = "PAUSED"
    lines.on_trial_complete(0, [t], t)
    assert out[-1] == ("[trial] aaaa0001 stopped at rung 1 (report 1/3): dev_score 0.5000 "
                       "(best 0.5000)")


def test_search_line_at_most_every_30s_and_only_when_something_happened_or_5_min_passed():
    lines, now, out = _lines()
    a, b = _Trial("aaaa0001", {}, "RUNNING"), _Trial("bbbb0002", {}, "PENDING")
    trials = [a, b]
    lines.on_step_end(0, trials)
    assert out == []  # nothing yet, and no time passed
    now[0] = 20.0
    lines.on_trial_result(0, trials, a, {})
    a.last_result = {"report": 1, "dev_score": 0.7, "best_dev_score": 0.7}
    lines.on_step_end(0, trials)
    assert out == []  # a report, but under 30 s since the start
    now[0] = 31.0
    lines.on_step_end(0, trials)
    lines.on_step_end(0, trials)  # the same moment: one line
    assert out == ["[search] 0 of 3 trials ended, 1 running, 2 to start; best dev_score 0.7000 "
                   "(trial aaaa0001); 31s"]
    now[0] = 200.0
    lines.on_step_end(0, trials)  # nothing happened since: quiet until 5 min after the last
    assert len(out) == 1
    now[0] = 331.0
    lines.on_step_end(0, trials)
    assert len(out) == 2 and out[-1].endswith("; 5m31s")


def test_trial_lines_pickle_without_their_log():
    """Tune pickles its callbacks into its saved state: a closure as the log must not stop it."""
    import pickle

    from orchestrator.search.trial_lines import TrialLines

    seen = []
    lines = TrialLines("dev_score", "max", 3, log=lambda m: seen.append(m))
    copy = pickle.loads(pickle.dumps(lines))
    assert copy.log is print and copy.total_reports == 3 and lines.log is not print


def test_a_restored_search_gets_this_calls_output():
    """Tune restores a search with the run config it was started with; a search started on a
    terminal and resumed into a log file gets the log file's output (and back)."""
    from types import SimpleNamespace

    from ray import tune

    from orchestrator.search.search import _restored_output
    from orchestrator.search.trial_lines import TrialLines

    saved = tune.RunConfig(verbose=0, callbacks=[TrialLines("dev_score", "max", 3)])
    tuner = SimpleNamespace(_local_tuner=SimpleNamespace(get_run_config=lambda: saved))
    _restored_output(tuner, 1, [])  # resumed on a terminal
    assert saved.verbose == 1 and saved.callbacks == []
    fresh = TrialLines("dev_score", "max", 3)
    _restored_output(tuner, 0, [fresh])  # and into a log file again
    assert saved.verbose == 0 and saved.callbacks == [fresh]
