"""Shared fixtures: the local assets (skipped with a reason when absent), and a private Ray."""
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
