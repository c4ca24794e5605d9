"""Shared fixtures: the local assets (skipped with a reason when absent), a private local Ray
(plain, or started as a search starts it), a run guarded against doing work before its checks.
Helpers that are not fixtures (tiny students, bundles, replayed curves) are in _support.py."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.config import find_assets

# Every Ray a test starts, in this process or in a search it runs as a subprocess, is its own
# local instance: never a cluster `ray start` recorded on this machine, nor one RAY_ADDRESS
# names (another user's, or a search running beside the tests). Tests of joining a cluster pass
# its address explicitly.
os.environ["RAY_ADDRESS"] = "local"


def _private_ray(start):
    """Start a private local Ray with ``start()`` unless one is up already; shut it down after
    the module's tests only if this fixture started it."""
    import ray

    started = not ray.is_initialized()
    if started:
        start()
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_local():
    """A private local Ray for tests of Ray tasks and actors: 2 CPUs, no dashboard, workers'
    output and Ray's own logging kept out of the test's. Yields the ``ray`` module."""
    import ray

    yield from _private_ray(lambda: ray.init(address="local", num_cpus=2, include_dashboard=False,
                                             log_to_driver=False, configure_logging=False))


@pytest.fixture(scope="module")
def ray_search():
    """A private local Ray of 2 CPUs started as a search starts one (``init_ray``: the dashboard
    on loopback, which Tune's trial clean-up needs, and the GCS port every worker is told), for
    tests that run a search or Ray Train. Yields the ``ray`` module."""
    from orchestrator.runtime.ray_runtime import init_ray

    yield from _private_ray(lambda: init_ray(num_cpus=2, log=lambda m: None))


@pytest.fixture()
def guarded(tmp_path, monkeypatch):
    """A working dir for a run that must stop at its input checks: no tracking URI, work root or
    NLTK data from the environment, and a failure if a teacher is fine-tuned or Ray is started
    (before or after the test). Yields the working dir."""
    import ray

    import orchestrator.runtime.ray_runtime
    import orchestrator.search.search
    import orchestrator.stages.teacher

    def forbidden(what):
        def f(*a, **k):
            raise AssertionError(f"{what} was called before the bad input was reported")
        return f

    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "DISTILLRAY_WORK_ROOT", "NLTK_DATA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(orchestrator.stages.teacher, "finetune_teacher",
                        forbidden("finetune_teacher"))
    monkeypatch.setattr(orchestrator.search.search, "init_ray", forbidden("init_ray"))
    monkeypatch.setattr(orchestrator.runtime.ray_runtime, "init_ray", forbidden("init_ray"))
    monkeypatch.setattr(ray, "init", forbidden("ray.init"))
    assert not ray.is_initialized()
    yield tmp_path
    assert not ray.is_initialized()


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    """The shared assets folder; skips the test when it is not on this machine."""
    found = find_assets()
    if found is None:
        pytest.skip("shared assets not found (set $DISTILLRAY_ASSETS or put them at "
                    "../shared/assets beside the repository)")
    return found


@pytest.fixture(scope="session")
def glue_dir(assets_dir: Path) -> Path:
    """The GLUE TSV root (holds SST-2/, MRPC/, ...); skips when absent."""
    path = assets_dir / "glue"
    if not path.is_dir():
        pytest.skip(f"GLUE TSV assets not found at {path}")
    return path


@pytest.fixture(scope="session")
def glove_path(assets_dir: Path) -> Path:
    """The 50-dimensional GloVe subset; skips when absent."""
    path = assets_dir / "embeddings" / "glove.6B.50d.glue.txt"
    if not path.is_file():
        pytest.skip(f"GloVe assets not found at {path}")
    return path


def wait_for_health(base: str, proc, timeout: float, what: str, exit_detail=lambda: "") -> None:
    """Poll ``base``/health until an MLflow server answers OK; fail if ``proc`` exits first."""
    import time
    import urllib.request

    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.read().strip() == b"OK":
                    return
        except OSError:
            pass
        assert proc.poll() is None, f"{what} exited" + exit_detail()
        assert time.time() < deadline, f"{what} did not answer /health in {timeout:g} s"
        time.sleep(1)


@pytest.fixture(scope="session")
def tiny_nltk_data(tmp_path_factory) -> Path:
    """A minimal NLTK data folder for the generated tasks' words: a perceptron-tagger lexicon
    (no learned weights: every word of the generated vocabulary is in its tag dictionary) and a
    PTB -> universal tag map. Lets tests run Tang augmentation without the shared assets."""
    import json

    from tasks.generated import CONTENT, CUE_GROUPS, FILLER

    root = tmp_path_factory.mktemp("nltk_data")
    tagger = root / "taggers" / "averaged_perceptron_tagger_eng"
    tagger.mkdir(parents=True)
    tags = {**{w: "DT" for w in FILLER}, **{w: "NN" for w in CONTENT},
            **{w: "JJ" for g in CUE_GROUPS for w in g}}
    stem = "averaged_perceptron_tagger_eng"
    (tagger / f"{stem}.weights.json").write_text("{}")
    (tagger / f"{stem}.tagdict.json").write_text(json.dumps(tags))
    (tagger / f"{stem}.classes.json").write_text(json.dumps(["DT", "JJ", "NN", "."]))
    universal = root / "taggers" / "universal_tagset"
    universal.mkdir(parents=True)
    (universal / "en-ptb.map").write_text("DT\tDET\nJJ\tADJ\nNN\tNOUN\n.\t.\n")
    return root
