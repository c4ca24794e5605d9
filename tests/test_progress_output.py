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
    tqdm's in the processes it starts (TQDM_DISABLE); a user's TQDM_DISABLE=0 wins."""
    import subprocess
    import sys

    from transformers.utils import logging as hf_logging

    from orchestrator.runtime.progress import quiet_library_bars

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)  # restored afterwards
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    monkeypatch.setenv("TQDM_DISABLE", "0")
    hf_logging.enable_progress_bar()  # an earlier CLI call in this process may have turned it off
    quiet_library_bars()
    assert hf_logging.is_progress_bar_enabled() and os.environ["TQDM_DISABLE"] == "0"
    monkeypatch.delenv("TQDM_DISABLE")
    try:
        quiet_library_bars()  # pytest's capture: not a terminal
        assert not hf_logging.is_progress_bar_enabled()
        from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

        assert MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.get() is False
    finally:
        hf_logging.enable_progress_bar()
    child = subprocess.run(
        [sys.executable, "-c", "from tqdm import tqdm\nfor _ in tqdm(range(3)): pass"],
        capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert child.returncode == 0 and child.stderr == ""  # a Ray worker's bars: none


def test_tunes_status_table_every_5_minutes_in_a_log_file(monkeypatch):
    """Tune's trial table (about 1 KB) every 5 min off a terminal, not every 30 s."""
    from ray.tune.experimental.output import ProgressReporter

    from orchestrator.search.search import _tune_status_in_a_log_file

    monkeypatch.setattr(ProgressReporter, "_heartbeat_freq", 30)
    _tune_status_in_a_log_file()  # pytest's capture: not a terminal
    assert ProgressReporter._heartbeat_freq == 300
