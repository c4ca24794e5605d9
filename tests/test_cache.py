"""Soft-label cache: content addressing, hit/miss counts, corruption, fsspec roots (no Ray)."""
from __future__ import annotations

import hashlib
import logging
import os
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.teachers.cache import CacheError, SoftLabelCache, text_key, text_keys


def _labels(n: int, c: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {text_key(f"text {seed} {i}"): rng.normal(size=c).astype(np.float32) for i in range(n)}


def _cache(root, **kw) -> SoftLabelCache:
    args = dict(teacher_key="t0", tokenizer_name="tok", max_length=64, head="sst2")
    args.update(kw)
    return SoftLabelCache(str(root), **args)


def _shards(cache: SoftLabelCache) -> list[str]:
    return sorted(n for n in os.listdir(cache.dir) if n.endswith(".parquet"))


def test_text_key_distinguishes_pairs_and_singles():
    assert text_key("a") != text_key("a", "")
    assert text_key("a", "b") != text_key("b", "a")
    assert text_key("a b") != text_key("a", "b")
    assert text_key("x", "y") == text_key("x", "y")
    assert text_keys(["a", "b"], ["c", None]) == [text_key("a", "c"), text_key("b")]
    with pytest.raises(ValueError, match="texts_b"):
        text_keys(["a"], ["b", "c"])


def test_put_then_lookup_from_a_fresh_instance(tmp_path):
    labels = _labels(50)
    c1 = _cache(tmp_path)
    found, missing = c1.lookup(list(labels))
    assert found == {} and missing == list(labels)
    assert (c1.stats.hits, c1.stats.misses) == (0, 50)
    path = c1.put(labels)
    # the shard is Parquet with the promised columns, named by the sha256 of its bytes
    name = os.path.basename(path)
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() + ".parquet" == name
    table = pq.read_table(path)
    assert table.column_names == ["text_key", "logits"]
    ltype = table.schema.field("logits").type
    assert pa.types.is_list(ltype) and ltype.value_type == pa.float32()
    assert not [n for n in os.listdir(c1.dir) if n.startswith(".")]  # no temp files left

    c2 = _cache(tmp_path)
    extra = text_key("never seen")
    found, missing = c2.lookup(list(labels) + [extra])
    assert missing == [extra]
    assert (c2.stats.hits, c2.stats.misses) == (50, 1)
    for k, v in labels.items():
        assert found[k].dtype == np.float32
        np.testing.assert_array_equal(found[k], v)
    # putting labels that are all cached already writes nothing
    assert c2.put({k: labels[k] for k in list(labels)[:5]}) is None
    assert len(_shards(c2)) == 1


def test_namespaces_keep_teachers_heads_and_lengths_apart(tmp_path):
    labels = _labels(5)
    _cache(tmp_path).put(labels)
    for other in (dict(teacher_key="t1"), dict(head="mnli"), dict(max_length=128),
                  dict(tokenizer_name="other")):
        found, missing = _cache(tmp_path, **other).lookup(list(labels))
        assert found == {} and len(missing) == 5, other
    found, _ = _cache(tmp_path).lookup(list(labels))
    assert len(found) == 5


def test_sees_shards_written_by_another_instance_after_first_lookup(tmp_path):
    reader = _cache(tmp_path)
    a, b = _labels(4, seed=1), _labels(4, seed=2)
    reader.put(a)
    assert reader.lookup(list(b))[1] == list(b)
    _cache(tmp_path).put(b)  # another trial writes
    found, missing = reader.lookup(list(b))
    assert missing == [] and len(found) == 4


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "garbage_with_matching_name"])
def test_corrupt_shard_is_deleted_and_its_texts_are_misses(tmp_path, caplog, damage):
    good, bad = _labels(10, seed=1), _labels(10, seed=2)
    c = _cache(tmp_path)
    c.put(good)
    bad_path = c.put(bad)
    if damage == "truncate":
        with open(bad_path, "r+b") as f:
            f.truncate(os.path.getsize(bad_path) // 2)
    elif damage == "overwrite":  # same size, flipped bytes in the middle: checksum catches it
        size = os.path.getsize(bad_path)
        with open(bad_path, "r+b") as f:
            f.seek(size // 2)
            f.write(b"\x00" * 16)
    else:  # bytes whose sha256 matches the name but that are not Parquet
        os.unlink(bad_path)
        data = b"not parquet at all " + uuid.uuid4().bytes
        bad_path = os.path.join(c.dir, hashlib.sha256(data).hexdigest() + ".parquet")
        with open(bad_path, "wb") as f:
            f.write(data)
    fresh = _cache(tmp_path)
    with caplog.at_level(logging.WARNING, logger="orchestrator.teachers.cache"):
        found, missing = fresh.lookup(list(good) + list(bad))
    assert sorted(missing) == sorted(bad)
    assert set(found) == set(good)
    assert fresh.stats.corrupt_shards == 1
    assert not os.path.exists(bad_path)
    assert "corrupt or unreadable" in caplog.text
    # recomputed labels go into a new, valid shard
    fresh.put(bad)
    again = _cache(tmp_path)
    assert again.lookup(list(bad))[1] == []


def test_unwritable_root_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match=r"cache root .*a_file/sub is not writable.*--cache-root"):
        _cache(blocker / "sub")


def test_fsspec_root_and_compact():
    root = f"memory://distillray-test-{uuid.uuid4().hex[:8]}/labels"
    parts = [_labels(6, seed=s) for s in range(3)]
    c = _cache(root)
    for p in parts:
        c.put(p)
    assert len(c.fs.ls(c.dir, detail=False)) == 3
    assert c.compact() == 3
    remaining = [p for p in c.fs.ls(c.dir, detail=False) if str(p).endswith(".parquet")]
    assert len(remaining) == 1
    fresh = _cache(root)
    allkeys = [k for p in parts for k in p]
    found, missing = fresh.lookup(allkeys)
    assert missing == [] and fresh.stats.shards_loaded == 1
    for p in parts:
        for k, v in p.items():
            np.testing.assert_array_equal(found[k], v)
    c.fs.rm(root.split("://", 1)[1].split("/")[0], recursive=True)


def test_rejects_labels_of_another_width(tmp_path):
    c = _cache(tmp_path)
    c.put(_labels(2, c=3))
    with pytest.raises(ValueError, match="3 per text"):
        c.put(_labels(2, c=2, seed=9))
