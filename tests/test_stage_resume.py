"""The two data stages between teacher and student resume from what they wrote: Tang
augmentation (orchestrator/stages/augment_stage.py) and bulk labeling into the soft-label cache
(orchestrator/teachers/teacher_pool.py, orchestrator/teachers/cache.py).

Each test interrupts a stage part-way (SIGKILL of a subprocess, an error raised at a fault
point, a full disk), runs it again and counts what the second run computed: only the chunks or
texts that were not finished, with the same output as an uninterrupted run. Also: progress lines,
seconds summed over resumptions, and cache keys that must not move (a running job uses them).
Tiny generated data, the tiny NLTK data of conftest and a tiny random teacher: seconds each.
"""
from __future__ import annotations

import builtins
import errno
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import orchestrator.stages.augment_stage as stage
from orchestrator.config import AugmentConfig
from orchestrator.runtime import faults, keys
from orchestrator.runtime.keys import DiskFullError, atomic_file
from orchestrator.runtime.progress import StageProgress, duration
from orchestrator.stages.augment_stage import (MANIFEST_FILE, PARTS_SUFFIX, TAGS_DIR,
                                               augment_cache_key, augment_dataset, stage_seconds,
                                               tags_cache_key)
from orchestrator.teachers.cache import LEDGER_DIR, SoftLabelCache, labeling_seconds, text_keys
from tasks.data import Example
from tasks.generated import CONTENT, CUE_GROUPS, FILLER

REPO = Path(__file__).resolve().parents[1]
N_SINGLE, N_PAIRS, CHUNK = 90, 30, 15  # 8 chunks of 15 examples
N_CHUNKS = (N_SINGLE + N_PAIRS) // CHUNK


def _examples() -> list[Example]:
    """Sentences of the generated tasks' words (all in the tiny tagger's dictionary), a few
    pairs among them, ids out of order."""
    rng = random.Random(5)
    words = list(FILLER) + list(CONTENT) + [w for g in CUE_GROUPS for w in g]

    def sentence() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))

    out = [Example(i, sentence(), None, i % 2) for i in range(N_SINGLE)]
    out += [Example(500 + i, sentence(), sentence(), None) for i in range(N_PAIRS)]
    rng.shuffle(out)
    return out


def _cfg(nltk_data: Path, **kw) -> AugmentConfig:
    base = dict(enabled=True, nltk_data=str(nltk_data), n_iter=3, chunk_size=CHUNK, seed=2)
    base.update(kw)
    return AugmentConfig(**base)


def _records(folder: Path) -> list[Path]:
    return sorted(folder.glob("chunk-*.record.json")) if folder.is_dir() else []


def _temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name]


class _Spy:
    """Counts calls of a module function it stands in for."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *a, **kw):
        self.calls += 1
        return self.fn(*a, **kw)


class _FaultAt:
    """Stands in for ``faults.point``: raises at the ``n``-th time ``name`` is reached."""

    def __init__(self, name: str, n: int):
        self.name, self.n, self.seen = name, n, 0

    def __call__(self, name: str) -> None:
        if name == self.name:
            self.seen += 1
            if self.seen == self.n:
                raise RuntimeError(f"fault at {name} #{self.n}")


@pytest.fixture(scope="module", autouse=True)
def tiny_tagger(tiny_nltk_data):
    """Tag with the tiny NLTK data here as in the subprocess and the Ray workers: NLTK's tagger
    is loaded once per process, from the first folder on nltk.data.path that holds it, and
    other test modules may have loaded the real one already."""
    import nltk

    from tasks import augment as aug

    saved_cache, saved_path = dict(aug._TAGGER_CACHE), list(nltk.data.path)
    aug._TAGGER_CACHE.clear()
    nltk.data.path[:] = [str(tiny_nltk_data)] + [p for p in saved_path
                                                  if p != str(tiny_nltk_data)]
    yield
    aug._TAGGER_CACHE.clear()
    aug._TAGGER_CACHE.update(saved_cache)
    nltk.data.path[:] = saved_path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_nltk_data, tiny_tagger):
    """An uninterrupted run: the bytes every resumed run must reproduce."""
    res = augment_dataset(_examples(), _cfg(tiny_nltk_data), tmp_path_factory.mktemp("ref"),
                          "gen:1", progress=False)
    return res.path.read_bytes()


# ---------------------------------------------------------------------------------------------
# augmentation


_KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {repo!r})
sys.path.insert(0, {tests!r})
from orchestrator.runtime import faults
import test_stage_resume as t
seen = [0]
def point(name):
    if name == "augment_chunk":
        seen[0] += 1
        if seen[0] == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)  # no finally, no atexit: like the OOM killer
faults.point = point
t.augment_dataset(t._examples(), t._cfg({nltk!r}), {out!r}, "gen:1", progress=False)
"""


def test_augment_killed_by_sigkill_resumes_with_only_the_missing_chunks(
        tmp_path, tiny_nltk_data, reference, monkeypatch):
    out = tmp_path / "work" / "transfer"
    cfg = _cfg(tiny_nltk_data)
    key = augment_cache_key(cfg, "gen:1")
    parts = out / f"{key}{PARTS_SUFFIX}"
    # tagging reaches the point once per chunk, then augmenting: die after 3 augmented chunks
    script = _KILL_SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests"),
                                 nltk=str(tiny_nltk_data), out=str(out), kill_at=N_CHUNKS + 3)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (out / key).exists()
    assert len(_records(parts)) == 3
    assert (out / TAGS_DIR / f"{tags_cache_key('gen:1', '[MASK]', cfg.max_words)}.json").is_file()

    # what a kill can leave besides finished chunks: a temp file mid-write, a data file whose
    # record never came; and one finished chunk damaged since: none of them may count
    done = sorted(parts.glob("chunk-*.parquet"))
    (parts / f".{done[0].name}.tmp-deadbeef").write_bytes(b"half a chunk")
    table = pq.read_table(done[1])  # still Parquet, same rows, one text changed
    text_a = table.column("text_a").to_pylist()
    text_a[0] = "changed since"
    pq.write_table(table.set_column(2, "text_a", pa.array(text_a, pa.string())), done[1],
                   compression="zstd")
    orphan = parts / "chunk-999999-15.parquet"
    orphan.write_bytes(b"data without its record")

    tag_spy, aug_spy = _Spy(stage._tag_chunk), _Spy(stage._augment_task)
    monkeypatch.setattr(stage, "_tag_chunk", tag_spy)
    monkeypatch.setattr(stage, "_augment_task", aug_spy)
    res = augment_dataset(_examples(), cfg, out, "gen:1", progress=False)
    assert tag_spy.calls == 0  # the tags were complete
    assert aug_spy.calls == N_CHUNKS - 2 == res.chunks_computed  # 3 finished, 1 of them damaged
    assert res.chunks_reused == 2 and not res.reused
    assert res.path.read_bytes() == reference
    assert not parts.exists() and not _temps(tmp_path)
    manifest = json.loads((res.path.parent / MANIFEST_FILE).read_text())
    assert manifest["seconds"]["calls"] == 2  # the killed call's chunks count
    assert manifest["seconds"]["tagging"] > 0 and manifest["seconds"]["augmenting"] > 0
    assert stage_seconds(res.path) == pytest.approx(manifest["seconds"]["total"])
    assert res.stage_seconds == pytest.approx(manifest["seconds"]["total"])


def test_augment_error_mid_tagging_then_mid_sampling_resumes(tmp_path, tiny_nltk_data,
                                                            reference, monkeypatch):
    """An error inside either loop (here: at the fault point, after some chunks were written)
    keeps the finished chunks; each re-run computes only the others."""
    tag_spy, aug_spy = _Spy(stage._tag_chunk), _Spy(stage._augment_task)
    monkeypatch.setattr(stage, "_tag_chunk", tag_spy)
    monkeypatch.setattr(stage, "_augment_task", aug_spy)
    cfg = _cfg(tiny_nltk_data)
    out = tmp_path / "transfer"

    monkeypatch.setattr(faults, "point", _FaultAt("augment_chunk", 3))  # 3rd tagged chunk
    with pytest.raises(RuntimeError, match="fault at augment_chunk #3"):
        augment_dataset(_examples(), cfg, out, "gen:1", progress=False)
    assert (tag_spy.calls, aug_spy.calls) == (3, 0)

    # again: 5 more chunks to tag, then the 2nd augmented chunk fails
    monkeypatch.setattr(faults, "point", _FaultAt("augment_chunk", (N_CHUNKS - 3) + 2))
    tag_lines: list[str] = []
    with pytest.raises(RuntimeError):
        augment_dataset(_examples(), cfg, out, "gen:1", progress=False, log=tag_lines.append)
    assert (tag_spy.calls, aug_spy.calls) == (N_CHUNKS, 2)
    n = N_SINGLE + N_PAIRS
    assert tag_lines[-1].startswith(f"[augment] gen POS tagging: {n}/{n} examples (100%), ")
    assert tag_lines[-1].endswith(f"({3 * CHUNK} done by earlier calls)")

    monkeypatch.setattr(faults, "point", lambda name: None)
    lines: list[str] = []
    res = augment_dataset(_examples(), cfg, out, "gen:1", progress=False, log=lines.append,
                          task="gen")
    assert (tag_spy.calls, aug_spy.calls) == (N_CHUNKS, N_CHUNKS)
    assert (res.chunks_computed, res.chunks_reused) == (N_CHUNKS - 2, 2)
    assert res.path.read_bytes() == reference
    manifest = json.loads((res.path.parent / MANIFEST_FILE).read_text())
    assert manifest["seconds"]["calls"] == 3
    # progress: the sampling phase's last line counts the 2 resumed chunks as done
    total = sum(3 for _ in _examples())  # n_iter=3 samples per example
    assert lines[-1].startswith(f"[augment] gen: {total:,}/{total:,} samples (100%), ")
    assert f"({2 * CHUNK * 3:,} done by earlier calls)" in lines[-1]

    again = augment_dataset(_examples(), cfg, out, "gen:1", progress=False)
    assert again.reused and aug_spy.calls == N_CHUNKS
    assert again.stage_seconds == pytest.approx(res.stage_seconds)


class _DiskFullOnce:
    """Stands in for ``open`` inside orchestrator.runtime.keys: the first write-open of a path that
    ``match`` accepts writes part of the data, then fails as a full disk would."""

    def __init__(self, match):
        self.match, self.fired, self.path = match, False, None

    def __call__(self, file, mode="r", *a, **kw):
        f = builtins.open(file, mode, *a, **kw)
        if self.fired or "w" not in mode or not self.match(str(file)):
            return f
        self.fired, self.path = True, str(file)
        real_write = f.write

        def write(data):
            real_write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        f.write = write
        return f


def test_augment_disk_full_is_a_clear_error_and_the_rerun_resumes(tmp_path, tiny_nltk_data,
                                                                  reference, monkeypatch):
    work = tmp_path / "work"
    out = work / "transfer"
    cfg = _cfg(tiny_nltk_data)
    parts = out / f"{augment_cache_key(cfg, 'gen:1')}{PARTS_SUFFIX}"
    seen = []

    def fifth_chunk(path: str) -> bool:  # the temp file of the 5th augmented chunk's data
        if ".parquet.tmp-" in path and f"{PARTS_SUFFIX}/" in path:
            seen.append(path)
        return len(seen) == 5

    fake = _DiskFullOnce(fifth_chunk)
    monkeypatch.setattr(keys, "open", fake, raising=False)
    with pytest.raises(DiskFullError) as info:
        augment_dataset(_examples(), cfg, out, "gen:1", progress=False)
    monkeypatch.undo()
    msg = str(info.value)
    assert fake.fired and info.value.errno == errno.ENOSPC
    assert f"work root {work}" in msg and "free" in msg and "re-run the same command" in msg
    assert info.value.root == str(work) and info.value.free is not None
    assert not _temps(tmp_path)  # the half-written temp file is gone
    assert len(_records(parts)) == 4  # the failed chunk has neither data nor record
    assert len(list(parts.glob("chunk-*.parquet"))) == 4

    spy = _Spy(stage._augment_task)
    monkeypatch.setattr(stage, "_augment_task", spy)
    res = augment_dataset(_examples(), cfg, out, "gen:1", progress=False)
    assert spy.calls == res.chunks_computed == N_CHUNKS - 4
    assert res.path.read_bytes() == reference


def test_augment_ray_path_resumes_with_only_the_missing_chunks(tmp_path, tiny_nltk_data,
                                                               reference, ray_local,
                                                               monkeypatch):
    """Two Ray workers: chunks finish in any order and are kept as they finish."""
    saved: list[str] = []
    real_save = stage._Parts.save

    def save(self, name, ext, data, record):
        real_save(self, name, ext, data, record)
        if ext == "parquet":
            saved.append(name)

    monkeypatch.setattr(stage._Parts, "save", save)
    cfg = _cfg(tiny_nltk_data, num_workers=2)
    monkeypatch.setattr(faults, "point", _FaultAt("augment_chunk", N_CHUNKS + 4))
    with pytest.raises(RuntimeError):
        augment_dataset(_examples(), cfg, tmp_path, "gen:1", progress=False)
    first = list(saved)
    assert len(first) == 4
    monkeypatch.setattr(faults, "point", lambda name: None)
    res = augment_dataset(_examples(), cfg, tmp_path, "gen:1", progress=False)
    again = saved[len(first):]
    assert len(again) == res.chunks_computed == N_CHUNKS - 4
    assert not set(again) & set(first)
    assert res.path.read_bytes() == reference


# ---------------------------------------------------------------------------------------------
# keys that must not move


def test_cache_keys_are_unchanged(tmp_path, monkeypatch):
    """Literal keys of transfer sets, POS tags and soft-label namespaces written before the
    stages resumed: a running job finds its work under them."""
    monkeypatch.setattr(stage, "_tagger_identity",
                        lambda: "nltk-3.9.1-averaged_perceptron_tagger_eng-universal")
    assert augment_cache_key(AugmentConfig(enabled=True), "sst2:abc") == "7ae3f4135777045d"
    assert augment_cache_key(AugmentConfig(enabled=True, n_iter=10, max_examples=5000, seed=3),
                             "mrpc:def", pair_mode="cycle") == "36db333d8bdf5390"
    assert augment_cache_key(AugmentConfig(enabled=False), "sst2:abc") == "133ac3591e10f127"
    assert tags_cache_key("sst2:abc", "[MASK]", 256) == "d507db01e6ae244f"
    assert SoftLabelCache(str(tmp_path), "t0", "bundled", 128, "sst2").namespace == \
        "7b5ee9b5ca1875cc"
    assert SoftLabelCache(str(tmp_path), "t0", "bundled", 128, "sst2", "bf16").namespace == \
        "f828e7801b0508e6"


# ---------------------------------------------------------------------------------------------
# disk full in the shared atomic writes (teacher checkpoints use the same helper)


def test_atomic_file_disk_full_keeps_the_previous_file_and_names_the_work_root(tmp_path,
                                                                            monkeypatch):
    ckpt = tmp_path / "wr" / "teachers" / ".partial" / "k1" / "checkpoint.pt"
    with atomic_file(ckpt) as f:
        f.write(b"step 10")
    monkeypatch.setattr(keys, "open", _DiskFullOnce(lambda p: True), raising=False)
    with pytest.raises(DiskFullError, match=f"work root {tmp_path / 'wr'}") as info:
        with atomic_file(ckpt) as f:
            f.write(b"step 20, a much longer checkpoint")
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert ckpt.read_bytes() == b"step 10"  # the last complete checkpoint survives
    assert os.listdir(ckpt.parent) == ["checkpoint.pt"]
    # a library that wraps the system's error (torch.save, pyarrow) is recognised too
    with pytest.raises(DiskFullError):
        with atomic_file(ckpt) as f:
            try:
                raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
            except OSError as e:
                raise RuntimeError("PytorchStreamWriter failed writing file data") from e
    with pytest.raises(DiskFullError, match="free"):
        with keys.atomic_dir(tmp_path / "wr" / "bundles" / "b1") as tmp:
            (tmp / "a").write_bytes(b"x")
            raise RuntimeError(f"IOError: {os.strerror(errno.ENOSPC)}")
    assert sorted(os.listdir(tmp_path / "wr" / "bundles")) == []
    with pytest.raises(ValueError):  # other errors pass through unchanged
        with atomic_file(ckpt) as f:
            raise ValueError("not a disk problem")
    assert ckpt.read_bytes() == b"step 10"


def test_write_bytes_atomic_disk_full_on_an_fsspec_store_names_the_work_root(monkeypatch):
    """The remote path of the same helper (a soft-label shard on an object store): the
    temporary goes, the error names the work root the path lies under."""
    import fsspec

    fs = fsspec.filesystem("memory")
    folder = "/wr-full/soft_labels/ns"
    keys.write_bytes_atomic(fs, f"{folder}/old.parquet", b"kept")
    real_pipe = fs.pipe_file

    def full(path, data, **kw):  # half the bytes land, then the store is out of space
        real_pipe(path, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fs, "pipe_file", full)
    with pytest.raises(DiskFullError, match="work root /wr-full") as info:
        keys.write_bytes_atomic(fs, f"{folder}/new.parquet", b"0123456789")
    assert info.value.root == "/wr-full"
    assert [p.rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)] == ["old.parquet"]
    fs.rm("/wr-full", recursive=True)


# ---------------------------------------------------------------------------------------------
# progress lines


def test_progress_lines_rate_eta_and_resumed_work():
    now = [0.0]
    lines: list[str] = []
    p = StageProgress("augment", "sst2", 1_346_980, unit="texts", done=0, log=lines.append,
                      clock=lambda: now[0])
    for _ in range(20):  # 20 s of work: no line before 30 s
        now[0] += 1.0
        p.update(2_050)
    assert lines == []
    now[0] = 200.0
    p.update(410_000 - 20 * 2_050)
    assert lines == ["[augment] sst2: 410,000/1,346,980 texts (30%), 2,050/s, about 7m37s left"]
    now[0] = 210.0
    p.update(1)
    assert len(lines) == 1  # at most one line per 30 s
    # resumed work counts as done, not in the rate
    q = StageProgress("label", "mrpc", 1000, done=600, log=lines.append, clock=lambda: now[0])
    assert q.line().endswith("rate not known yet (600 done by earlier calls)")
    now[0] += 40.0
    q.update(200)
    assert lines[-1] == ("[label] mrpc: 800/1,000 texts (80%), 5/s, about 40s left "
                         "(600 done by earlier calls)")
    q.update(200)
    q.finish()
    assert lines[-1] == ("[label] mrpc: 1,000/1,000 texts (100%), 10/s, done in 40s in this "
                         "call (600 done by earlier calls)")
    assert (duration(59.4), duration(61), duration(7325)) == ("59s", "1m01s", "2h02m")


# ---------------------------------------------------------------------------------------------
# labeling


MAXLEN = 32
WORDS = "the a movie film good bad great plot actor boring fun slow sharp dull story".split()


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    from orchestrator.teachers.teacher_model import create_random_teacher

    return create_random_teacher(tmp_path_factory.mktemp("teacher") / "t", WORDS, num_labels=2,
                                 head_name="sst2", max_position=64, seed=3)


@pytest.fixture(scope="module")
def pool(ray_local, teacher_dir):
    from orchestrator.config import PoolConfig
    from orchestrator.teachers.teacher_pool import TeacherPool

    cfg = PoolConfig(num_actors=1, cpus_per_actor=0.5, token_budget=256, max_batch_size=8,
                     precision="fp32")
    p = TeacherPool(teacher_dir, cfg, chunk_size=16, inflight_per_actor=1, cache_flush_rows=32)
    yield p
    p.shutdown()


def _texts(n: int = 150, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, int(rng.integers(1, 20)))) + f" {i}" for i in range(n)]
    return texts + texts[:20]  # duplicates are labeled once


@pytest.fixture(scope="module")
def clean_labels(pool):
    return pool.label_texts(_texts(), max_length=MAXLEN, progress=False).logits


def _rows_on_disk(pool, root) -> int:
    return len(pool.cache(str(root), max_length=MAXLEN))


def test_labeling_killed_mid_run_resumes_with_only_the_unwritten_texts(pool, clean_labels,
                                                                       tmp_path, monkeypatch):
    """A SIGKILL keeps only what was flushed: after the 5th chunk (16 texts each, a shard every
    32), 2 shards are on disk, and the half-flushed 5th chunk is not."""
    from orchestrator.teachers import teacher_pool as tp

    root = tmp_path / "wr" / "soft_labels"
    cache = pool.cache(str(root), max_length=MAXLEN)
    killed = {"now": False}
    real_put = SoftLabelCache.put

    def put(self, labels, *a, **kw):
        if killed["now"]:  # the process is gone: the final flush never runs
            raise SystemExit("killed")
        return real_put(self, labels, *a, **kw)

    def point(name):
        if name == "labeling":
            point.n += 1
            if point.n == 5:
                killed["now"] = True
                raise SystemExit("killed")
    point.n = 0
    monkeypatch.setattr(SoftLabelCache, "put", put)
    monkeypatch.setattr(tp.faults, "point", point)
    with pytest.raises(SystemExit):
        pool.label_texts(_texts(), max_length=MAXLEN, cache=cache, progress=False)
    monkeypatch.undo()
    assert _rows_on_disk(pool, root) == 64
    assert cache.labeling_record()["flushes"] == 2

    found, _ = pool.cache(str(root), max_length=MAXLEN).lookup(text_keys(_texts()))
    lines: list[str] = []
    res = pool.label_texts(_texts(), max_length=MAXLEN, progress=False,
                           cache=pool.cache(str(root), max_length=MAXLEN), log=lines.append,
                           task="sst2")
    assert res.computed == 150 - 64
    assert res.hits == sum(1 for k in text_keys(_texts()) if k in found)  # duplicates too
    np.testing.assert_allclose(res.logits, clean_labels, atol=1e-5)
    assert lines[-1].startswith("[label] sst2: 150/150 texts (100%)")
    assert lines[-1].endswith("(64 done by earlier calls)")
    record = pool.cache(str(root), max_length=MAXLEN).labeling_record()
    assert record["rows"] == 150 and record["calls"] == 2 and record["seconds"] > 0
    assert labeling_seconds(pool.cache(str(root), max_length=MAXLEN)) == record["seconds"]
    # a third call finds everything and computes nothing
    third = pool.label_texts(_texts(), max_length=MAXLEN, progress=False,
                             cache=pool.cache(str(root), max_length=MAXLEN))
    assert third.computed == 0
    np.testing.assert_array_equal(third.logits, res.logits)


def test_labeling_error_mid_run_keeps_every_finished_chunk(pool, clean_labels, tmp_path,
                                                           monkeypatch):
    from orchestrator.teachers import teacher_pool as tp

    root = tmp_path / "soft_labels"
    monkeypatch.setattr(tp.faults, "point", _FaultAt("labeling", 3))
    with pytest.raises(RuntimeError, match="fault at labeling #3"):
        pool.label_texts(_texts(), max_length=MAXLEN, progress=False,
                         cache=pool.cache(str(root), max_length=MAXLEN))
    monkeypatch.undo()
    assert _rows_on_disk(pool, root) == 3 * 16  # flushed on the way out
    res = pool.label_texts(_texts(), max_length=MAXLEN, progress=False,
                           cache=pool.cache(str(root), max_length=MAXLEN))
    assert res.computed == 150 - 48
    np.testing.assert_allclose(res.logits, clean_labels, atol=1e-5)


def test_labeling_disk_full_is_a_clear_error_and_the_rerun_resumes(pool, clean_labels,
                                                                   tmp_path, monkeypatch):
    work = tmp_path / "wr"
    root = work / "soft_labels"
    cache = pool.cache(str(root), max_length=MAXLEN)
    shards: list[str] = []

    def second_shard(path: str) -> bool:
        if ".parquet.tmp-" in path and cache.namespace in path:
            shards.append(path)
        return len(shards) == 2

    monkeypatch.setattr(keys, "open", _DiskFullOnce(second_shard), raising=False)
    with pytest.raises(DiskFullError) as info:
        pool.label_texts(_texts(), max_length=MAXLEN, cache=cache, progress=False)
    monkeypatch.undo()
    assert f"work root {work}" in str(info.value) and "re-run the same command" in str(info.value)
    assert not _temps(tmp_path)
    on_disk = _rows_on_disk(pool, root)  # every shard there verifies (sha256 = name)
    assert 0 < on_disk < 150
    assert pool.cache(str(root), max_length=MAXLEN).stats.corrupt_shards == 0
    res = pool.label_texts(_texts(), max_length=MAXLEN, progress=False,
                           cache=pool.cache(str(root), max_length=MAXLEN))
    assert res.computed == 150 - on_disk
    np.testing.assert_allclose(res.logits, clean_labels, atol=1e-5)
    assert _rows_on_disk(pool, root) == 150


def test_ledger_sums_seconds_over_writers_and_ignores_damaged_entries(tmp_path):
    """Without Ray: seconds recorded with shards add up over instances; an entry that cannot
    be read is skipped, and writes without seconds leave no entry."""
    def cache():
        return SoftLabelCache(str(tmp_path), "t0", "bundled", 64, "sst2")

    keys_ = text_keys([f"text {i}" for i in range(6)])
    rows = {k: np.ones(2, np.float32) * i for i, k in enumerate(keys_)}
    a, b = cache(), cache()
    a.put(dict(list(rows.items())[:3]), seconds=1.5, call="c1")
    b.lookup(keys_)  # b now knows a's shard
    b.put(dict(list(rows.items())[3:]), seconds=2.0, call="c2")
    b.put(dict(list(rows.items())[:2]), seconds=0.25, call="c2")  # written by a already
    cache().put({text_keys(["x"])[0]: np.zeros(2, np.float32)})  # no seconds: no entry
    (Path(a.dir) / LEDGER_DIR / "garbage.json").write_text("{not json")
    rec = cache().labeling_record()
    assert rec == {"seconds": 3.75, "rows": 6, "flushes": 3, "calls": 2}
    assert labeling_seconds(cache()) == 3.75
    fresh = SoftLabelCache(str(tmp_path / "none"), "t0", "bundled", 64, "sst2")
    assert fresh.labeling_seconds() == 0.0


def test_pipeline_logs_progress_and_reports_both_stages_seconds(pool, tmp_path, tiny_nltk_data):
    """What the report calls: the transfer set and the labels go through the pipeline (its log
    gets the progress lines), then data_stage_seconds reads both stages' seconds back."""
    from orchestrator.config import ExperimentConfig
    from orchestrator.stages.pipeline import (TeacherRef, data_stage_seconds, label_examples,
                                              transfer_examples)
    from orchestrator.teachers.teacher_model import mask_token
    from tasks.generated import generate_task_data
    from tasks.registry import get_task

    cfg = ExperimentConfig(work_root=str(tmp_path / "wr"), augment=_cfg(tiny_nltk_data))
    data = {"sst2": generate_task_data(get_task("sst2"), 40, 5, 0)}
    teachers = {"sst2": TeacherRef(pool.teacher_path, "teacher-dir-key", "sst2", MAXLEN)}
    assert data_stage_seconds(cfg, data, teachers) == {"sst2": {"augment": None, "label": 0.0}}
    lines: list[str] = []
    examples, _, path = transfer_examples(cfg, data["sst2"], Path(cfg.work_root),
                                          mask_token(pool.teacher_path), lines.append)
    label_examples(examples, teachers["sst2"], cfg, Path(cfg.work_root), lines.append, pool,
                   "sst2")
    spent = data_stage_seconds(cfg, data, teachers)["sst2"]
    assert spent["augment"] == stage_seconds(path) > 0
    cache = pool.cache(str(tmp_path / "wr" / "soft_labels"), "sst2", MAXLEN)
    assert spent["label"] == cache.labeling_seconds() > 0
    assert any(ln.startswith("[augment] sst2: ") and " samples (100%)" in ln for ln in lines)
    assert any(ln.startswith(f"[label] sst2: {len(cache):,}/{len(cache):,} texts (100%)")
               for ln in lines)


def test_cached_labels_start_no_pool_and_equal_the_pools(pool, tmp_path, monkeypatch):
    """A transfer set whose every label is in the soft-label cache is labeled from the cache:
    no teacher pool starts (no actors, no probe), the logits are the pool's, and the gate's
    verdict picks the cache as the pool would. One missing text: a pool labels as usual."""
    import orchestrator.teachers.teacher_pool as tp
    from orchestrator.config import ExperimentConfig, PoolConfig
    from orchestrator.stages.pipeline import TeacherRef, label_examples, labels_from_cache

    small = dict(num_actors=1, cpus_per_actor=0.5, probe=False)
    bf16 = ExperimentConfig(work_root=str(tmp_path / "wr"), pool=PoolConfig(precision="bf16", **small))
    ref = TeacherRef(pool.teacher_path, "k", "sst2", MAXLEN)
    examples = [Example(i, t) for i, t in enumerate(_texts(40, seed=7))]
    assert labels_from_cache(examples, ref, bf16, Path(bf16.work_root)) is None  # nothing yet
    with tp.TeacherPool(pool.teacher_path, bf16.pool, probe_root=bf16.work_root) as bf16_pool:
        first = label_examples(examples, ref, bf16, Path(bf16.work_root), lambda m: None,
                               bf16_pool, "sst2")
        figures = bf16_pool.fidelity_metrics()
    assert first.precision == "bf16" and first.misses == len(examples)

    def no_pool(*a, **k):
        raise AssertionError("a teacher pool was started for labels that are all cached")

    monkeypatch.setattr(tp, "TeacherPool", no_pool)
    lines: list[str] = []
    again = label_examples(examples, ref, bf16, Path(bf16.work_root), lines.append)
    np.testing.assert_array_equal(again.logits, first.logits)
    assert (again.hits, again.misses, again.precision) == (len(examples), 0, "bf16")
    assert lines == [f"[label] sst2: {len(examples)} texts, all from the soft-label cache in "
                     "bf16 (no teacher pool started)"]
    assert labels_from_cache(examples, ref, bf16, Path(bf16.work_root))[1] == figures

    # a threshold the stored verdict fails: the pool would label in fp32, so the fp32 cache
    # (empty here) is the one read
    strict = ExperimentConfig(work_root=bf16.work_root,
                              pool=PoolConfig(precision="bf16", fidelity_threshold=1.01, **small))
    assert labels_from_cache(examples, ref, strict, Path(bf16.work_root)) is None
    # fp32 labels were never computed: not served from the bf16 cache
    fp32 = ExperimentConfig(work_root=bf16.work_root, pool=PoolConfig(precision="fp32", **small))
    assert labels_from_cache(examples, ref, fp32, Path(bf16.work_root)) is None
    # one text the cache lacks: a pool is started
    more = [*examples, Example(len(examples), "a text never labeled before")]
    with pytest.raises(AssertionError, match="pool was started"):
        label_examples(more, ref, bf16, Path(bf16.work_root), lines.append)
