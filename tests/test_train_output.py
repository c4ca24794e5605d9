"""What a Ray Train worker prints reaches the driver once (Train's print patching, which logs
each line and prints it too, is off for the workers ``init_ray`` starts); a user's own
``RAY_TRAIN_ENABLE_PRINT_PATCH`` still wins."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a Ray start each (about 30 s); the slow suite runs in CI too
REPO = Path(__file__).resolve().parent.parent
SCRIPT = """
import sys
from orchestrator.runtime.ray_runtime import init_ray
init_ray(address="local", num_cpus=1)
import ray.train
from ray.train.torch import TorchTrainer

def loop(config):
    print("LINE-FROM-THE-WORKER", flush=True)

TorchTrainer(loop, scaling_config=ray.train.ScalingConfig(
    num_workers=1, resources_per_worker={"CPU": 1}),
    run_config=ray.train.RunConfig(storage_path=sys.argv[1], name="out")).fit()
"""


def _lines(tmp_path, **env) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO, timeout=300,
                         capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO), **env})
    assert out.returncode == 0, out.stderr[-3000:]
    return (out.stdout + out.stderr).count("LINE-FROM-THE-WORKER")


def test_a_workers_line_reaches_the_driver_once(tmp_path):
    assert _lines(tmp_path) == 1


def test_the_users_own_setting_wins(tmp_path):
    assert _lines(tmp_path, RAY_TRAIN_ENABLE_PRINT_PATCH="1") == 2
