"""The soft-label cache every trial shares: teacher logits, content-addressed.

Layout under a root (a local path or any fsspec URI)::

    <root>/<namespace>/<sha256 of the shard bytes>.parquet

``namespace`` is :func:`orchestrator.runtime.keys.content_key` of (teacher identity, tokenizer, max
length, head, and the labeling precision unless fp32), so a different teacher, tokenizer,
truncation length, head or precision never sees another's labels: bf16 labels are never served
as fp32 ones. fp32 namespaces are keyed as before precisions existed, so fp32 labels cached then
are still found. Each row of a shard holds ``text_key`` (sha256 of the text pair, see :func:`text_key`) and
``logits`` (``list<float32>``).

Rules
- A shard is written once, to a temporary name, then renamed (local) or moved (remote) into place:
  a reader never sees half a shard under a final name.
- A shard's name is the sha256 of its bytes. Readers verify it; a shard that does not match, or
  that Parquet cannot read, or whose columns are wrong, is logged, deleted, and its texts count as
  misses (they are recomputed, never trusted).
- Shards are immutable, so many processes (Tune trials, the labeling stage) can write at once
  without a manifest to fight over. :meth:`SoftLabelCache.compact` merges small shards.
- Each instance keeps an in-memory index, loaded lazily on the first lookup and refreshed (one
  directory listing) when a lookup misses, so labels written by another trial are found.
- Time spent: a writer that passes ``seconds`` to :meth:`SoftLabelCache.put` also writes one
  small ledger entry, ``<namespace>/ledger/<id>.json`` (rows, seconds, the shard), right after
  the shard. :meth:`SoftLabelCache.labeling_seconds` sums the entries, so labeling time adds up
  over every call, process and resumption that labeled into the namespace; work a killed
  process computed but had not flushed is neither in a shard nor in the ledger.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from orchestrator.runtime.keys import content_key, work_root_of, write_bytes_atomic

log = logging.getLogger(__name__)

SHARD_SUFFIX = ".parquet"
CACHE_FORMAT = 1
LEDGER_DIR = "ledger"  # <namespace>/ledger/<id>.json: the seconds spent on each flush


class CacheError(RuntimeError):
    """The cache root cannot be used (unwritable, unreachable)."""


def text_key(text_a: str, text_b: str | None = None) -> str:
    """sha256 (hex) of a text or text pair; ``("a", None)`` and ``("a", "")`` differ."""
    return hashlib.sha256(json.dumps([text_a, text_b], ensure_ascii=False).encode()).hexdigest()


def text_keys(texts_a: Iterable[str], texts_b: Iterable[str | None] | None = None) -> list[str]:
    texts_a = list(texts_a)
    if texts_b is None:
        return [text_key(a) for a in texts_a]
    texts_b = list(texts_b)
    if len(texts_b) != len(texts_a):
        raise ValueError(f"{len(texts_a)} texts_a but {len(texts_b)} texts_b")
    return [text_key(a, b) for a, b in zip(texts_a, texts_b)]


def logits_table(keys: list[str], logits: np.ndarray) -> pa.Table:
    """A ``text_key: string, logits: list<float32>`` table from keys and an ``[N, C]`` array."""
    mat = np.ascontiguousarray(np.asarray(logits, dtype=np.float32))
    if mat.ndim != 2 or mat.shape[0] != len(keys):
        raise ValueError(f"logits of shape {mat.shape} do not match {len(keys)} keys")
    return pa.table({"text_key": pa.array(keys, pa.string()),
                     "logits": list_array(mat)})


def list_array(mat: np.ndarray) -> pa.ListArray:
    """``[N, C]`` float32 -> ``list<float32>`` without a Python loop."""
    n, c = mat.shape
    offsets = pa.array(np.arange(0, n * c + 1, c, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(mat.reshape(-1), pa.float32()))


def logits_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """``list<float>`` column -> ``[N, C]`` float32; ValueError on nulls or ragged rows."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    if arr.null_count:
        raise ValueError("logits column has nulls")
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)
            or pa.types.is_fixed_size_list(arr.type)):
        raise ValueError(f"logits column has type {arr.type}, not a list of floats")
    values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    if len(values) % n:
        raise ValueError("logits rows have different lengths")
    c = len(values) // n
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
    if (lengths != c).any():
        raise ValueError("logits rows have different lengths")
    return values.reshape(n, c)


def namespace_key(teacher_key: str, tokenizer_name: str, max_length: int, head: str,
                  precision: str = "fp32") -> str:
    """The namespace (folder) of one teacher setup's labels under a cache root."""
    return content_key({"format": CACHE_FORMAT, "teacher": teacher_key,
                        "tokenizer": tokenizer_name, "max_length": int(max_length),
                        "head": head,
                        # absent for fp32: keys from before precisions stay valid
                        **({"precision": precision} if precision != "fp32" else {})})


def _ledger_record(fs: fsspec.AbstractFileSystem, namespace_dir: str) -> dict:
    try:
        names = fs.ls(f"{namespace_dir}/{LEDGER_DIR}", detail=False)
    except FileNotFoundError:
        names = []
    seconds, rows, flushes, calls = 0.0, 0, 0, set()
    for n in names:
        base = str(n).rstrip("/").rsplit("/", 1)[-1]
        if not base.endswith(".json") or base.startswith("."):
            continue
        try:
            entry = json.loads(fs.cat_file(str(n)))
            seconds += float(entry["seconds"])
            rows += int(entry.get("rows") or 0)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        flushes += 1
        calls.add(entry.get("call") or base)
    return {"seconds": seconds, "rows": rows, "flushes": flushes, "calls": len(calls)}


def read_ledger(root: str, namespace: str) -> dict:
    """:meth:`SoftLabelCache.labeling_record` of ``namespace`` under ``root``, read without
    opening the cache (nothing is created; an absent namespace reads as zeros)."""
    fs, root_path = fsspec.core.url_to_fs(str(root))
    return _ledger_record(fs, f"{root_path.rstrip('/')}/{namespace}")


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    shards_loaded: int = 0
    corrupt_shards: int = 0


class SoftLabelCache:
    """Teacher logits keyed by text, shared by every trial that uses the same teacher setup.

    ``root``: local path or fsspec URI; ``teacher_key``:
    :func:`~orchestrator.teachers.teacher_model.teacher_identity` of the teacher;
    ``tokenizer_name``: the tokenizer identity (for a teacher
    dir that bundles its tokenizer, its files are already in ``teacher_key``); ``max_length``:
    the truncation length; ``head``: the resolved head name; ``precision``: the precision the
    labels were computed in (``fp32 | bf16 | fp16``).
    """

    def __init__(self, root: str, teacher_key: str, tokenizer_name: str, max_length: int,
                 head: str, precision: str = "fp32"):
        self.root = str(root)
        self.teacher_key = teacher_key
        self.tokenizer_name = tokenizer_name
        self.max_length = int(max_length)
        self.head = head
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"soft-label cache precision {precision!r}: a resolved precision "
                             "(fp32, bf16 or fp16), not auto")
        self.precision = precision
        self.namespace = namespace_key(teacher_key, tokenizer_name, self.max_length, head,
                                       precision)
        self.fs, root_path = fsspec.core.url_to_fs(self.root)
        root_path = root_path.rstrip("/") or "/"
        self.dir = f"{root_path}/{self.namespace}" if root_path != "/" else f"/{self.namespace}"
        # what a full disk names: the work root when the cache is its soft_labels/, else the root
        self._disk_root = str(work_root_of(f"{root_path}/{self.namespace}"))
        self._check_writable()
        self._index: dict[str, np.ndarray] = {}
        self._loaded: set[str] = set()  # shard names already read (or found bad)
        self._num_labels: int | None = None
        self._scanned = False
        self.stats = CacheStats()

    # -- construction helpers -------------------------------------------------------------

    @classmethod
    def for_teacher(cls, root: str, teacher_path: str | os.PathLike, max_length: int = 128,
                    head: str | None = None, precision: str = "fp32") -> "SoftLabelCache":
        """A cache for a teacher directory: identity from its files, head resolved like the
        teacher resolves it (single-task teachers have one head whatever the task is called)."""
        from orchestrator.teachers.teacher_model import teacher_identity

        return cls(root, teacher_identity(teacher_path), "bundled", max_length,
                   resolve_head_name(teacher_path, head), precision)

    def with_precision(self, precision: str) -> "SoftLabelCache":
        """The cache of the same teacher setup and root for labels in another precision."""
        if precision == self.precision:
            return self
        return SoftLabelCache(self.root, self.teacher_key, self.tokenizer_name, self.max_length,
                              self.head, precision)

    def _check_writable(self) -> None:
        probe = f"{self.dir}/.probe-{uuid.uuid4().hex[:8]}"
        try:
            self.fs.makedirs(self.dir, exist_ok=True)
            self.fs.pipe_file(probe, b"ok")
            self.fs.rm(probe)
        except Exception as e:  # noqa: BLE001 - any failure means the root is unusable
            raise CacheError(
                f"cache root {self.root} is not writable: {type(e).__name__}: {e}; "
                "set the pool cache root (--cache-root) to a writable directory or fsspec URI"
            ) from None

    # -- reading ----------------------------------------------------------------------------

    def _shard_names(self) -> list[str]:
        try:
            entries = self.fs.ls(self.dir, detail=False)
        except FileNotFoundError:
            return []
        names = [str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries]
        return sorted(n for n in names if n.endswith(SHARD_SUFFIX) and not n.startswith("."))

    def refresh(self) -> int:
        """Read shards not seen yet (written by this or another process); returns how many."""
        self._scanned = True
        new = [n for n in self._shard_names() if n not in self._loaded]
        for name in new:
            self._load_shard(name)
        return len(new)

    def _load_shard(self, name: str) -> None:
        path = f"{self.dir}/{name}"
        self._loaded.add(name)
        try:
            data = self.fs.cat_file(path)
        except FileNotFoundError:  # compacted away by another process; its rows live elsewhere
            return
        try:
            digest = hashlib.sha256(data).hexdigest()
            if digest != name[: -len(SHARD_SUFFIX)]:
                raise ValueError(f"checksum mismatch (content sha256 {digest[:12]}...)")
            table = pq.read_table(pa.BufferReader(data))
            if "text_key" not in table.column_names or "logits" not in table.column_names:
                raise ValueError(f"columns {table.column_names}, want text_key and logits")
            keys = table.column("text_key").to_pylist()
            mat = logits_matrix(table.column("logits"))
            if len(keys) and self._num_labels is not None and mat.shape[1] != self._num_labels:
                raise ValueError(f"{mat.shape[1]} logits per row, other shards have "
                                 f"{self._num_labels}")
            if any(k is None for k in keys):
                raise ValueError("null text_key")
        except Exception as e:  # noqa: BLE001 - never trust a shard we cannot verify
            self.stats.corrupt_shards += 1
            log.warning("soft-label cache: shard %s is corrupt or unreadable (%s); deleting it, "
                        "its texts will be recomputed", path, e)
            with contextlib.suppress(Exception):
                self.fs.rm(path)
            return
        if len(keys):
            self._num_labels = mat.shape[1]
        for k, row in zip(keys, mat):
            self._index[k] = row
        self.stats.shards_loaded += 1

    def lookup(self, keys: Iterable[str]) -> tuple[dict[str, np.ndarray], list[str]]:
        """``(found key -> float32 logits, missing keys in the given order)``; counts hits and
        misses per key. A miss triggers one re-scan for shards written by others."""
        keys = list(keys)
        if not self._scanned:
            self.refresh()
        missing = [k for k in keys if k not in self._index]
        if missing and self.refresh():
            missing = [k for k in missing if k not in self._index]
        found = {k: self._index[k] for k in keys if k in self._index}
        self.stats.hits += len(keys) - len(missing)
        self.stats.misses += len(missing)
        return found, missing

    def __contains__(self, key: str) -> bool:
        if not self._scanned:
            self.refresh()
        return key in self._index

    def __len__(self) -> int:
        if not self._scanned:
            self.refresh()
        return len(self._index)

    @property
    def num_labels(self) -> int | None:
        return self._num_labels

    # -- writing ----------------------------------------------------------------------------

    def put(self, labels: Mapping[str, np.ndarray], seconds: float | None = None,
            call: str | None = None) -> str | None:
        """Write the labels not cached yet as one new shard; returns its path (None if all were
        cached already). ``seconds``: the time spent computing ``labels``, recorded in the
        ledger after the shard (also when another process had written them all first: the
        time was spent); ``call``: an id of the labeling call, to count calls."""
        new = {k: v for k, v in labels.items() if k not in self._index}
        path = None
        if new:
            keys = list(new)
            mat = np.stack([np.asarray(new[k], dtype=np.float32).reshape(-1) for k in keys])
            if self._num_labels is not None and mat.shape[1] != self._num_labels:
                raise ValueError(f"labels have {mat.shape[1]} logits, this cache holds "
                                 f"{self._num_labels} per text")
            path = self._write_shard(keys, mat)
        if seconds is not None:
            entry = {"rows": len(new), "seconds": float(seconds), "call": call,
                     "shard": path.rsplit("/", 1)[-1] if path else None, "time": time.time()}
            write_bytes_atomic(self.fs, f"{self.dir}/{LEDGER_DIR}/{uuid.uuid4().hex}.json",
                               json.dumps(entry).encode(), root=self._disk_root)
        return path

    def labeling_record(self) -> dict:
        """What the ledger holds for this namespace: ``seconds`` (summed over every flush of
        every call and process), ``rows`` (labels those flushes added), ``flushes``, and
        ``calls`` (distinct labeling calls). Unreadable entries are skipped."""
        return _ledger_record(self.fs, self.dir)

    def labeling_seconds(self) -> float:
        """Seconds spent labeling into this namespace, summed over every call and resumption
        that recorded its time with :meth:`put` (bulk labeling does; on-demand labels during
        training do not); 0.0 when none did."""
        return self.labeling_record()["seconds"]

    def _write_shard(self, keys: list[str], mat: np.ndarray) -> str:
        buf = io.BytesIO()
        pq.write_table(logits_table(keys, mat), buf, compression="zstd")
        data = buf.getvalue()
        name = hashlib.sha256(data).hexdigest() + SHARD_SUFFIX
        path = f"{self.dir}/{name}"
        write_bytes_atomic(self.fs, path, data, root=self._disk_root)
        self._loaded.add(name)
        self._num_labels = mat.shape[1]
        for k, row in zip(keys, mat):
            self._index[k] = row
        return path

    def compact(self, min_shards: int = 2, stale_tmp_s: float = 3600.0) -> int:
        """Merge every shard into one (written first, then the old ones removed); also removes
        temp files older than ``stale_tmp_s``. Returns the number of shards merged."""
        self.refresh()
        names = self._shard_names()
        if len(names) >= min_shards and self._index:
            keys = list(self._index)
            merged = self._write_shard(keys, np.stack([self._index[k] for k in keys]))
            merged_name = merged.rsplit("/", 1)[-1]
            for n in names:
                if n != merged_name:
                    with contextlib.suppress(FileNotFoundError):
                        self.fs.rm(f"{self.dir}/{n}")
        else:
            names = []
        for info in self.fs.ls(self.dir, detail=True):
            base = str(info["name"]).rsplit("/", 1)[-1]
            if ".tmp-" not in base:
                continue
            mtime = info.get("mtime") or info.get("LastModified") or info.get("created")
            if hasattr(mtime, "timestamp"):
                mtime = mtime.timestamp()
            if mtime is not None and time.time() - float(mtime) > stale_tmp_s:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm(info["name"])
        return len(names)

    def __repr__(self) -> str:
        return (f"SoftLabelCache(root={self.root!r}, namespace={self.namespace}, "
                f"head={self.head!r}, max_length={self.max_length}, "
                f"precision={self.precision})")


def labeling_seconds(cache: SoftLabelCache) -> float:
    """Seconds spent labeling into ``cache``'s namespace, summed over every call and
    resumption (:meth:`SoftLabelCache.labeling_seconds`). Build the cache the way the labels
    were written: ``SoftLabelCache.for_teacher(work_root / "soft_labels", teacher_dir,
    max_length, head, precision)`` or ``pool.cache(...)``."""
    return cache.labeling_seconds()


def resolve_head_name(teacher_path: str | os.PathLike, head: str | None) -> str:
    """The head name a teacher answers ``head`` with, read from its metadata (no model load)."""
    from orchestrator.teachers.teacher_model import HEADS_FILE, TeacherError

    p = Path(teacher_path)
    meta_file = p / HEADS_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    heads = list(meta.get("heads", {})) or ["default"]
    if not meta.get("multitask"):
        return heads[0]  # a single-task teacher answers every task with its one head
    if head is None:
        if len(heads) == 1:
            return heads[0]
        raise TeacherError(f"teacher {p} has heads {sorted(heads)}: name one")
    if head not in heads:
        raise TeacherError(f"teacher {p} has no head for task {head!r} (heads: {sorted(heads)})")
    return head
