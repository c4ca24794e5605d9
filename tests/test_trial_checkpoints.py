"""Checkpoints of students trained in their Tune trial's process (train.num_workers=0): the latest
and the best by dev score survive, nothing else does, and a save cut short never becomes either."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from _support import random_bundle, tiny_config
from orchestrator.training.trial_checkpoints import STATE_FILE, TrialCheckpoints


def _dir(tmp_path, name: str, score: float):
    d = tmp_path / "local" / name
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(name.encode())
    (d / "metrics.json").write_text(json.dumps({"dev_score": score}))
    return d


def _read(ck: TrialCheckpoints, which: str) -> bytes | None:
    with ck.local(which) as d:
        return None if d is None else (d / "model.safetensors").read_bytes()


def _kept(ck: TrialCheckpoints) -> set[str]:
    return {p.name for p in Path(ck.path).iterdir() if p.name.startswith("checkpoint_")}


@pytest.fixture()
def ck(tmp_path):
    return TrialCheckpoints(str(tmp_path / "storage"), "search-trial1")


def test_nothing_saved_means_no_checkpoint(ck):
    assert ck.state() == {} and _read(ck, "latest") is None and _read(ck, "best") is None


def test_keeps_the_latest_and_the_best_by_dev_score(ck, tmp_path):
    for report, score in enumerate([0.6, 0.8, 0.7, 0.75]):
        where = ck.save(_dir(tmp_path, f"r{report}", score), report, score)
        assert where.endswith(f"checkpoint_{report:06d}")
    assert ck.state() == {"latest": "checkpoint_000003", "report": 3,
                          "best": "checkpoint_000001", "best_score": 0.8}
    assert _read(ck, "latest") == b"r3" and _read(ck, "best") == b"r1"
    assert _kept(ck) == {"checkpoint_000001", "checkpoint_000003"}
    ck.save(_dir(tmp_path, "r4", 0.9), 4, 0.9)  # a new best is also the latest
    assert _read(ck, "latest") == _read(ck, "best") == b"r4"
    assert _kept(ck) == {"checkpoint_000004"}


def test_a_nan_score_is_never_best_but_is_the_latest(ck, tmp_path):
    ck.save(_dir(tmp_path, "r0", math.nan), 0, math.nan)
    assert ck.state()["best"] == "checkpoint_000000" and ck.state()["best_score"] is None
    ck.save(_dir(tmp_path, "r1", 0.5), 1, 0.5)
    ck.save(_dir(tmp_path, "r2", math.nan), 2, math.nan)
    assert ck.state()["best"] == "checkpoint_000001" and ck.state()["latest"] == "checkpoint_000002"


def test_a_save_cut_short_is_replaced_and_never_named(ck, tmp_path):
    ck.save(_dir(tmp_path, "r0", 0.5), 0, 0.5)
    # a life killed while copying report 1: its directory exists, state.json does not name it
    partial = Path(ck.path) / "checkpoint_000001"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    assert ck.state()["latest"] == "checkpoint_000000"
    assert _read(ck, "latest") == b"r0"
    ck.save(_dir(tmp_path, "r1", 0.6), 1, 0.6)  # the resumed life writes report 1 again
    assert _read(ck, "latest") == b"r1"


def test_an_unreadable_state_starts_afresh(ck, tmp_path):
    ck.save(_dir(tmp_path, "r0", 0.5), 0, 0.5)
    (Path(ck.path) / STATE_FILE).write_text("{not json")
    assert ck.state() == {} and _read(ck, "latest") is None


def test_local_mode_outside_a_tune_trial_trains_in_this_process_and_resumes(tmp_path):
    """A report's student with train.num_workers=0: Ray Train's local mode in the caller's own
    process. Paused after one report, started again under the same name, it trains on from its
    checkpoint to the same student as one run never paused; the process's torch threads are
    given back."""
    import ray
    import torch

    from orchestrator.training.distill import distill_one

    bundle = random_bundle(tmp_path / "bundle")
    cfg = tiny_config(epochs=3, torch_threads=1)
    threads = torch.get_num_threads()
    storage = str(tmp_path / "train")
    try:
        first = distill_one(cfg, bundle, storage=storage, name="paused", pause_after=1)
        assert first.local and first.result.metrics["report"] == 1
        assert TrialCheckpoints(storage, "paused").state()["report"] == 0
        again = distill_one(cfg, bundle, storage=storage, name="paused")
        whole = distill_one(cfg, bundle, storage=storage, name="whole")
    finally:
        ray.shutdown()
    assert torch.get_num_threads() == threads
    assert again.result.metrics["report"] == whole.result.metrics["report"] == 3
    assert again.result.metrics["dev_score"] == whole.result.metrics["dev_score"]
    with again.checkpoint_dirs() as (a, _), whole.checkpoint_dirs() as (b, _):
        assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_remote_storage_is_read_through_a_temporary_copy(tmp_path):
    """An fsspec URI (here memory://, as s3:// or gs:// would be): saved there, read back
    through a local copy that is gone after use."""
    ck = TrialCheckpoints("memory://bucket/tune", f"search-{tmp_path.name}")
    ck.save(_dir(tmp_path, "r0", 0.5), 0, 0.5)
    ck.save(_dir(tmp_path, "r1", 0.4), 1, 0.4)
    with ck.local("best") as d:
        assert (d / "model.safetensors").read_bytes() == b"r0" and not str(d).startswith("memory")
    assert not d.exists()
    assert _read(ck, "latest") == b"r1"
