"""The augmentation stage: examples -> transfer set (Parquet), cached by content key, Ray-parallel.

Work is split so that the expensive part, POS tagging, happens once per training set:

1. tag chunks in parallel; each task returns per-tag word counts and the chunk's tags, which
   the driver saves as ``<out_root>/pos_tags/<key>.json`` (keyed by the examples, mask token,
   length limit and tagger, not by the rule parameters), so the next transfer set of the same
   training set (a search trial with other ``p_*``/``n_iter``) skips this step;
2. on the driver, merge the counts into the POS lexicon of the whole training set;
3. augment chunks in parallel, each task reading its chunk's tags and the shared lexicon.

With ``num_workers == 1`` (or a single chunk, or augmentation disabled) the same steps run
inline, without Ray. Every example draws its randomness from ``(seed, example id)`` only, so
the output file is byte-identical whatever ``num_workers`` and ``chunk_size`` are.

Resuming: each finished chunk of steps 1 and 3 is kept on disk until the whole output is
written, so a call killed part-way (SIGKILL, an error, a full disk) loses at most the chunks in
flight, and the next call with the same key computes only the chunks that are missing:

* ``<out_root>/pos_tags/<tags key>.parts/`` and ``<out_root>/<key>.parts/`` hold one data file
  per chunk (``chunk-<first example id>-<examples>.json`` / ``.parquet``), written atomically,
  then its record (``<same name>.record.json``: the data file's SHA-256, rows, rule stats and
  seconds), written atomically after it. A chunk counts only when its record exists and the
  data file matches the checksum; anything else is computed again. A chunk is named by the
  examples it holds, so a call with another ``chunk_size`` reuses none and mixes none.
* once the output (or the tags file) is in place, its parts folder is removed.

Output, under ``<out_root>/<key>/`` (written through
:func:`orchestrator.runtime.keys.atomic_dir`, with ``manifest.json`` written last):

* ``transfer.parquet``: columns ``example_id`` int64, ``aug_index`` int32 (0 = the original),
  ``text_a`` string, ``text_b`` string (null for single sentences), ``label`` float64 (the gold
  label on originals, null on augmented rows), sorted by ``(example_id, aug_index)``;
* ``manifest.json``: key, row count, SHA-256 of the Parquet file, the stats, the config, and
  ``seconds``: the time the stage spent on this output summed over every call that contributed
  (``tagging``, ``augmenting``, ``assembling``, ``total``, ``calls``); read it with
  :func:`stage_seconds`. Each chunk's seconds are the driver's wall time since the previous
  chunk of its call finished, so with Ray workers they add up to wall time, not CPU time.

A later call with the same key reuses the output when the manifest's row count and checksum
match the file; otherwise the folder is removed and rebuilt.

Progress: with a ``log`` callable, each phase logs a line at most every 30 s and at its end
(:class:`orchestrator.runtime.progress.StageProgress`): examples tagged, then samples drawn
(``n_iter`` per example) out of all, the rate of this call and the time left; chunks from earlier
calls count as done.

A full disk while writing a chunk, the tags or the output raises
:class:`orchestrator.runtime.keys.DiskFullError` (naming the work root and the space left); the
chunks already written stay, and the same command resumes once space is freed.

``cfg.max_examples`` caps the number of rows: every original is kept first (if the cap is below
their number, a seeded random subset of originals is kept), then augmented rows in a random
order drawn from ``default_rng([seed, 0x7ca9])`` over the sorted rows, so the cap is
deterministic. ``aug_index`` values of kept rows are unchanged (gaps are possible).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.config import AugmentConfig
from orchestrator.runtime import faults
from orchestrator.runtime.keys import (atomic_dir, atomic_file, content_key, file_digest,
                                       work_root_of)
from orchestrator.runtime.progress import StageProgress
from tasks import augment as aug
from tasks.data import Example
from tasks.text import DEFAULT_MASK

logger = logging.getLogger(__name__)

STAGE_VERSION = 1  # bump when the file layout or the cap rule changes
TRANSFER_FILE = "transfer.parquet"
MANIFEST_FILE = "manifest.json"
TAGS_DIR = "pos_tags"  # <out_root>/pos_tags/<key>.json: the POS tags of one training set
PARTS_SUFFIX = ".parts"  # <out_root>/<key>.parts/: the finished chunks of an unfinished output
TAGGING_RECORD = "tagging.json"  # in <key>.parts/: seconds spent tagging for this output
_CAP_SALT = 0x7CA9

SCHEMA = pa.schema(
    [
        ("example_id", pa.int64()),
        ("aug_index", pa.int32()),
        ("text_a", pa.string()),
        ("text_b", pa.string()),
        ("label", pa.float64()),
    ]
)
COLUMNS = [f.name for f in SCHEMA]


@dataclass
class AugmentResult:
    path: Path  # the transfer.parquet file
    key: str
    n_in: int  # examples given
    n_out: int  # rows written (originals included)
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # this call
    reused: bool = False
    # the stage's seconds on this output over every call that contributed (None: an output
    # written before the stage recorded them)
    stage_seconds: float | None = None
    chunks_computed: int = 0  # augmentation chunks computed by this call
    chunks_reused: int = 0  # augmentation chunks found finished, from earlier calls


# ---------------------------------------------------------------------------------------------
# keys and cache


def augment_cache_key(
    cfg: AugmentConfig, data_key: str, mask_token: str = DEFAULT_MASK, pair_mode: str = "cycle"
) -> str:
    """Content key of a transfer set. Leaves out what cannot change the output
    (``num_workers``, ``chunk_size``, ``nltk_data``'s location), and the rule parameters when
    augmentation is disabled."""
    spec: dict[str, Any] = {
        "stage": "augment",
        "stage_version": STAGE_VERSION,
        "rules_version": aug.RULES_VERSION,
        "data_key": data_key,
        "enabled": bool(cfg.enabled),
        "max_words": cfg.max_words,
        "max_examples": cfg.max_examples,
        "mask_token": mask_token,
    }
    if cfg.enabled:
        spec.update(
            p_mask=float(cfg.p_mask), p_pos=float(cfg.p_pos), p_ng=float(cfg.p_ng),
            n_iter=cfg.n_iter, max_ngram=cfg.max_ngram, seed=cfg.seed, pair_mode=pair_mode,
            tagger=_tagger_identity(),
        )
    elif cfg.max_examples is not None:
        spec["seed"] = cfg.seed  # the cap's order
    return content_key(spec)


def _manifest_ok(folder: Path) -> dict[str, Any] | None:
    """The manifest when the folder holds a complete, unchanged output; else None."""
    mpath, fpath = folder / MANIFEST_FILE, folder / TRANSFER_FILE
    if not (mpath.is_file() and fpath.is_file()):
        return None
    try:
        manifest = json.loads(mpath.read_text())
        if pq.ParquetFile(fpath).metadata.num_rows != manifest["rows"]:
            return None
        if file_digest(fpath, 64) != manifest["sha256"]:
            return None
    except Exception:  # noqa: BLE001 - unreadable manifest or Parquet file: rebuild
        return None
    return manifest


def stage_seconds(transfer: str | os.PathLike) -> float | None:
    """Seconds the augmentation stage spent on a finished transfer set, summed over every call
    that contributed (resumptions included): ``manifest.json``'s ``seconds.total``.

    ``transfer``: the ``transfer.parquet`` file (:attr:`AugmentResult.path`) or its folder.
    None for an output written before the stage recorded its seconds. Raises
    ``FileNotFoundError`` when there is no finished transfer set there."""
    folder = Path(transfer)
    if folder.name == TRANSFER_FILE:
        folder = folder.parent
    mpath = folder / MANIFEST_FILE
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"no finished transfer set at {folder} ({MANIFEST_FILE} "
                                f"unreadable: {e}); build it with augment_dataset") from None
    return _total_seconds(manifest)


def _total_seconds(manifest: dict) -> float | None:
    secs = manifest.get("seconds")
    return float(secs["total"]) if isinstance(secs, dict) and "total" in secs else None


# ---------------------------------------------------------------------------------------------
# finished chunks kept between calls


class _Parts:
    """The finished chunks of one unfinished output, in ``folder`` (see the module docstring):
    a chunk's data file is written atomically, then its record with the data's SHA-256; a chunk
    without a record, or whose data does not match it, does not count."""

    def __init__(self, folder: Path, root: Path):
        self.folder, self.root = folder, root  # root: the work root a full disk names

    def _paths(self, name: str, ext: str) -> tuple[Path, Path]:
        return self.folder / f"{name}.{ext}", self.folder / f"{name}.record.json"

    def load(self, name: str, ext: str) -> tuple[bytes, dict] | None:
        data_path, rec_path = self._paths(name, ext)
        try:
            record = json.loads(rec_path.read_text())
            data = data_path.read_bytes()
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or hashlib.sha256(data).hexdigest() != record.get("sha256"):
            logger.warning("augment: chunk %s does not match its record; computing it again",
                           data_path)
            return None
        return data, record

    def save(self, name: str, ext: str, data: bytes, record: dict) -> None:
        data_path, rec_path = self._paths(name, ext)
        # the record goes after the data: a kill between the two leaves a chunk that does not
        # count; a stale record of an earlier chunk would not match the new data's checksum
        with atomic_file(data_path, root=self.root) as f:
            f.write(data)
        with atomic_file(rec_path, "w", root=self.root) as f:
            json.dump(dict(record, sha256=hashlib.sha256(data).hexdigest()), f)

    def read_json(self, name: str) -> dict | None:
        try:
            d = json.loads((self.folder / name).read_text())
        except (OSError, ValueError):
            return None
        return d if isinstance(d, dict) else None

    def write_json(self, name: str, obj: dict) -> None:
        with atomic_file(self.folder / name, "w", root=self.root) as f:
            json.dump(obj, f)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _chunk_name(chunk: list[Example]) -> str:
    return f"chunk-{int(chunk[0].id)}-{len(chunk)}"


# ---------------------------------------------------------------------------------------------
# the work, shared by the inline and the Ray paths


def _tag_chunk(examples: list[Example], nltk_paths: list[str] | None, mask_token: str,
               max_words: int):
    tagger = aug.nltk_tagger(nltk_paths)
    tags = aug.tag_examples(examples, tagger, mask_token, max_words)
    counts = aug.count_tagged(examples, tags, mask_token)
    return {t: dict(c) for t, c in counts.items()}, tags


def _tag_task(examples, nltk_paths, mask_token, max_words):
    """:func:`_tag_chunk` and its seconds, as one Ray task returns them."""
    t0 = time.perf_counter()
    counts, tags = _tag_chunk(examples, nltk_paths, mask_token, max_words)
    return counts, tags, time.perf_counter() - t0


def _rows_to_columns(rows: list[aug.AugmentedRow]) -> dict[str, list]:
    return {
        "example_id": [r.example_id for r in rows],
        "aug_index": [r.aug_index for r in rows],
        "text_a": [r.text_a for r in rows],
        "text_b": [r.text_b for r in rows],
        "label": [r.label for r in rows],
    }


def _augment_chunk(examples, tags, lexicon, cfg, mask_token, pair_mode):
    rows, stats = aug.augment_examples(examples, lexicon, cfg, tags, mask_token=mask_token,
                                       pair_mode=pair_mode)
    return _rows_to_columns(rows), stats


def _augment_task(examples, tags, lexicon, cfg, mask_token, pair_mode):
    """One chunk augmented, as the Parquet bytes of its rows, its stats and its seconds (what
    the driver keeps on disk; the worker pays for the encoding)."""
    t0 = time.perf_counter()
    cols, st = _augment_chunk(examples, tags, lexicon, cfg, mask_token, pair_mode)
    return _table_bytes(_table(cols)), st, time.perf_counter() - t0


def _disabled_chunk(examples, cfg, mask_token):
    rows, stats = aug.augment_disabled(examples, cfg, mask_token)
    return _rows_to_columns(rows), stats


def _table(columns: dict[str, list]) -> pa.Table:
    return pa.table({c: pa.array(columns[c], type=SCHEMA.field(c).type) for c in COLUMNS},
                    schema=SCHEMA)


def _table_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _table_of_bytes(data: bytes) -> pa.Table:
    table = pq.read_table(pa.BufferReader(data))
    if table.column_names != COLUMNS:
        raise ValueError(f"chunk columns {table.column_names}, want {COLUMNS}")
    return table


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


_REMOTE: dict[str, Any] = {}


def _remote(name: str):
    """Ray remote wrappers of the chunk functions, made once."""
    import ray

    if not _REMOTE:
        # "DEFAULT": run outside the caller's placement group (e.g. a Tune trial's token share)
        _REMOTE["tag"] = ray.remote(num_cpus=1, scheduling_strategy="DEFAULT")(_tag_task)
        _REMOTE["augment"] = ray.remote(num_cpus=1, scheduling_strategy="DEFAULT")(_augment_task)
    return _REMOTE[name]


def _ensure_ray() -> None:
    from orchestrator.runtime.ray_runtime import init_ray

    init_ray(log=lambda m: None)  # a no-op when Ray is up; else the same rule as every stage


def _run_bounded(submit: Callable[[int], Any], todo: list[int], limit: int,
                 on_done: Callable[[int, Any], None]) -> None:
    """Submit ``submit(i)`` (an object ref) for each i of ``todo`` with at most ``limit`` in
    flight; hand each result to ``on_done(i, value)`` as it finishes (in any order)."""
    import ray

    pending: dict[Any, int] = {}
    nxt = 0
    while nxt < len(todo) or pending:
        while nxt < len(todo) and len(pending) < limit:
            pending[submit(todo[nxt])] = todo[nxt]
            nxt += 1
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            on_done(pending.pop(ref), ray.get(ref))


def _tagger_identity() -> str:
    # the installed version, without importing nltk (over a second): a search reads this in
    # every trial, most of which tag nothing
    from importlib.metadata import version

    return f"nltk-{version('nltk')}-averaged_perceptron_tagger_eng-universal"


def tags_cache_key(data_key: str, mask_token: str, max_words: int) -> str:
    """Content key of the POS tags of a training set: what tagging depends on (the examples, the
    mask token, the length limit, the tagger), not the rule parameters, so every transfer set
    of one training set reuses them."""
    return content_key({"stage": "pos_tags", "stage_version": STAGE_VERSION,
                        "data_key": data_key, "mask_token": mask_token, "max_words": max_words,
                        "tagger": _tagger_identity()})


def _read_tags(path: Path, n: int) -> tuple[dict, list] | None:
    """(per-tag word counts, per-example tags) from a tags file, or None when it is missing or
    does not hold ``n`` examples (it is then tagged again)."""
    try:
        d = json.loads(path.read_text())
        counts, tags = d["counts"], d["tags"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(tags, list) or len(tags) != n or not isinstance(counts, dict):
        return None
    return counts, [None if t is None else (t[0], t[1]) for t in tags]


def _write_tags(path: Path, counts: dict, tags: list, seconds: float | None = None,
                root: Path | None = None) -> None:
    with atomic_file(path, "w", root=root) as f:
        json.dump({"counts": counts, "tags": tags, "seconds": seconds}, f)


class _Seconds:
    """The stage's seconds on one output over every call: each chunk's record holds the wall
    time of its call since the call's previous chunk (the first: since the call began), so what
    killed calls spent up to their last chunk counts; this call counts whole."""

    def __init__(self, call: str, t0: float):
        self.call, self.t0, self.mark = call, t0, t0
        self.tagging: dict[str, float] = {}  # call -> seconds
        self.augmenting: dict[str, float] = {}

    def lap(self) -> float:
        """Seconds since this call's previous chunk (or its start)."""
        now = time.perf_counter()
        spent, self.mark = now - self.mark, now
        return spent

    @staticmethod
    def add(into: dict[str, float], call: str, seconds: float) -> None:
        into[call] = into.get(call, 0.0) + float(seconds)

    def summary(self) -> dict[str, float]:
        """``tagging`` and ``augmenting`` (chunk seconds of every call), ``assembling`` (the
        rest of this call), ``total`` and ``calls``."""
        earlier = sum(v for d in (self.tagging, self.augmenting) for c, v in d.items()
                      if c != self.call)
        total = earlier + time.perf_counter() - self.t0
        tagging, augmenting = sum(self.tagging.values()), sum(self.augmenting.values())
        return {"tagging": tagging, "augmenting": augmenting,
                "assembling": max(0.0, total - tagging - augmenting), "total": total,
                "calls": len(set(self.tagging) | set(self.augmenting) | {self.call})}


@dataclass
class _Run:
    """What one call needs beside the examples and the config."""
    mask_token: str
    pair_mode: str
    progress: bool  # tqdm bars in place of the progress lines, on a terminal
    nltk_paths: list[str] | None
    parallel: bool
    seconds: _Seconds  # this call's id (in every chunk record it writes) and clock
    root: Path  # the work root a full disk names
    task: str
    log: Callable[[str], None] | None


def _tag(chunks: list[list[Example]], cfg: AugmentConfig, run: _Run,
         parts: _Parts) -> tuple[dict, list]:
    """POS-tag every chunk (in Ray tasks when ``run.parallel``), keeping each finished chunk in
    ``parts`` and its seconds in ``run.seconds.tagging``: (merged counts, tags per chunk)."""
    results: list[tuple[dict, list] | None] = [None] * len(chunks)
    clock = run.seconds
    for i, c in enumerate(chunks):
        kept = parts.load(_chunk_name(c), "json")
        if kept is None:
            continue
        try:
            d = json.loads(kept[0])
            tags = [None if t is None else (t[0], t[1]) for t in d["tags"]]
            if len(tags) != len(c) or not isinstance(d["counts"], dict):
                continue
        except (ValueError, KeyError, TypeError, IndexError):
            continue
        results[i] = (d["counts"], tags)
        clock.add(clock.tagging, str(kept[1].get("call")), kept[1].get("seconds", 0.0))
    todo = [i for i, r in enumerate(results) if r is None]
    meter = StageProgress("augment", f"{run.task} POS tagging", sum(len(c) for c in chunks),
                          unit="examples", done=sum(len(chunks[i]) for i in range(len(chunks))
                                                    if results[i] is not None), log=run.log,
                          bar=run.progress)

    def done(i: int, out: tuple) -> None:
        counts, tags, task_s = out
        spent = clock.lap()
        parts.save(_chunk_name(chunks[i]), "json", json.dumps({"counts": counts, "tags": tags})
                   .encode(), {"examples": len(chunks[i]), "seconds": spent,
                               "task_seconds": task_s, "call": clock.call})
        clock.add(clock.tagging, clock.call, spent)
        results[i] = (counts, tags)
        meter.update(len(chunks[i]))
        faults.point("augment_chunk")

    try:
        if run.parallel and todo:
            _run_bounded(lambda i: _remote("tag").remote(chunks[i], run.nltk_paths,
                                                         run.mask_token, cfg.max_words),
                         todo, cfg.num_workers, done)
        else:
            for i in todo:
                t0 = time.perf_counter()
                counts, tags = _tag_chunk(chunks[i], run.nltk_paths, run.mask_token,
                                          cfg.max_words)
                done(i, (counts, tags, time.perf_counter() - t0))
    finally:
        meter.close()
    meter.finish()
    counts = aug.merge_counts(r[0] for r in results)
    return {t: dict(c) for t, c in counts.items()}, [r[1] for r in results]


def _augment(chunks: list[list[Example]], chunk_tags: list[list], lexicon, cfg: AugmentConfig,
             run: _Run, parts: _Parts) -> tuple[list[pa.Table], aug.AugmentStats, int]:
    """Augment every chunk (in Ray tasks when ``run.parallel``), reusing the chunks ``parts``
    holds and keeping each new one there, its seconds in ``run.seconds.augmenting``: (tables
    in chunk order, merged stats, chunks computed by this call)."""
    tables: list[pa.Table | None] = [None] * len(chunks)
    stats: list[aug.AugmentStats | None] = [None] * len(chunks)
    clock = run.seconds
    for i, c in enumerate(chunks):
        kept = parts.load(_chunk_name(c), "parquet")
        if kept is None:
            continue
        data, rec = kept
        try:
            table = _table_of_bytes(data)
            st = aug.AugmentStats(**{f.name: int(rec["stats"][f.name])
                                     for f in fields(aug.AugmentStats)})
            if table.num_rows != rec["rows"]:
                raise ValueError(f"{table.num_rows} rows, the record says {rec['rows']}")
        except Exception as e:  # noqa: BLE001 - a chunk that cannot be verified is recomputed
            logger.warning("augment: chunk %s unreadable (%s); computing it again",
                           _chunk_name(c), e)
            continue
        tables[i], stats[i] = table, st
        clock.add(clock.augmenting, str(rec.get("call")), rec.get("seconds", 0.0))
    todo = [i for i, t in enumerate(tables) if t is None]
    draws = [sum(aug.n_iter_for(cfg, e.text_b is not None) for e in c) for c in chunks]
    meter = StageProgress("augment", run.task, sum(draws), unit="samples",
                          done=sum(d for d, t in zip(draws, tables) if t is not None),
                          log=run.log, bar=run.progress)

    def done(i: int, out: tuple) -> None:
        data, st, task_s = out
        spent = clock.lap()
        table = _table_of_bytes(data)
        parts.save(_chunk_name(chunks[i]), "parquet", data,
                   {"examples": len(chunks[i]), "rows": table.num_rows, "stats": asdict(st),
                    "seconds": spent, "task_seconds": task_s, "call": clock.call})
        clock.add(clock.augmenting, clock.call, spent)
        tables[i], stats[i] = table, st
        meter.update(draws[i])
        faults.point("augment_chunk")

    try:
        if run.parallel and todo:
            import ray

            refs = {i: ray.put(chunks[i]) for i in todo}
            lex_ref = ray.put(lexicon)
            _run_bounded(lambda i: _remote("augment").remote(refs[i], chunk_tags[i], lex_ref,
                                                             cfg, run.mask_token, run.pair_mode),
                         todo, cfg.num_workers, done)
            del refs, lex_ref
        else:
            for i in todo:
                done(i, _augment_task(chunks[i], chunk_tags[i], lexicon, cfg, run.mask_token,
                                      run.pair_mode))
    finally:
        meter.close()
    meter.finish()
    merged = aug.AugmentStats()
    for st in stats:
        merged.merge(st)
    return tables, merged, len(todo)


def _cap_indices(aug_index: np.ndarray, cap: int | None, seed: int) -> np.ndarray | None:
    """The sorted row indices to keep under ``cap`` (None: keep all): originals first, then
    augmented rows in a seeded order."""
    n = len(aug_index)
    if cap is None or n <= cap:
        return None
    rng = np.random.default_rng([seed, _CAP_SALT])
    orig = np.flatnonzero(aug_index == 0)
    extra = np.flatnonzero(aug_index != 0)
    if cap <= len(orig):
        keep = rng.permutation(orig)[:cap]
    else:
        keep = np.concatenate([orig, rng.permutation(extra)[: cap - len(orig)]])
    return np.sort(keep)  # rows are sorted by (example_id, aug_index): index order keeps that


def _cap(columns: dict[str, list], cap: int | None, seed: int) -> tuple[dict[str, list], int]:
    """Keep at most ``cap`` rows: originals first, then augmented rows in a seeded order."""
    keep = _cap_indices(np.asarray(columns["aug_index"]), cap, seed)
    if keep is None:
        return columns, 0
    n = len(columns["example_id"])
    return {c: [columns[c][i] for i in keep.tolist()] for c in COLUMNS}, n - len(keep)


def _cap_table(table: pa.Table, cap: int | None, seed: int) -> tuple[pa.Table, int]:
    keep = _cap_indices(table.column("aug_index").to_numpy(), cap, seed)
    if keep is None:
        return table, 0
    return table.take(pa.array(keep, pa.int64())), table.num_rows - len(keep)


def _write(folder: Path, table: pa.Table, manifest: dict[str, Any],
           seconds: Callable[[], dict] | None = None) -> None:
    """The Parquet file, then the manifest (with ``seconds()`` taken after the file is
    written, when given)."""
    path = folder / TRANSFER_FILE
    pq.write_table(table, path, compression="zstd")
    manifest = dict(manifest, rows=table.num_rows, sha256=file_digest(path, 64))
    if seconds is not None:
        manifest["seconds"] = seconds()
    with atomic_file(folder / MANIFEST_FILE, "w") as f:  # last: marks the folder complete
        json.dump(manifest, f, indent=2, sort_keys=True)


def _single_table(tables: list[pa.Table]) -> pa.Table:
    """The chunks' rows as one table of :data:`SCHEMA`, one array per column (what the Parquet
    writer gets is then the same whatever the chunking)."""
    if not tables:
        return SCHEMA.empty_table()
    table = pa.concat_tables(tables).combine_chunks()
    return pa.Table.from_arrays([table.column(c).combine_chunks().cast(SCHEMA.field(c).type)
                                 for c in COLUMNS], schema=SCHEMA)


# ---------------------------------------------------------------------------------------------
# entry point


def augment_dataset(
    examples: Sequence[Example],
    cfg: AugmentConfig,
    out_root: str | os.PathLike,
    data_key: str,
    mask_token: str = DEFAULT_MASK,
    progress: bool = True,
    *,
    pair_mode: str = "cycle",
    log: Callable[[str], None] | None = None,
    task: str | None = None,
) -> AugmentResult:
    """Build (or reuse, or finish) the transfer set of ``examples``; see the module docstring.

    ``data_key`` identifies the examples' content (the caller's data hash). ``mask_token`` is the
    teacher tokenizer's mask token. With ``cfg.enabled`` False the transfer set is the originals.
    ``log``: progress lines (at most every 30 s and at each phase's end), named by ``task``
    (default: ``data_key`` up to its first ``:``); ``progress``: tqdm bars in place of the
    progress lines, on a terminal.
    Raises ``ValueError`` naming the field for a bad config,
    :class:`tasks.augment.NltkDataMissingError` before any work when NLTK data is missing, and
    :class:`orchestrator.runtime.keys.DiskFullError` when the disk fills (re-run once space is
    freed).
    """
    t0 = time.perf_counter()
    aug.validate_config(cfg, pair_mode)
    if not mask_token or any(ch.isspace() for ch in mask_token):
        raise ValueError(f"mask_token={mask_token!r} must be a non-empty word without spaces")
    examples = list(examples)
    aug.check_examples(examples)
    key = augment_cache_key(cfg, data_key, mask_token, pair_mode)
    out_root = Path(out_root)
    folder = out_root / key
    root = work_root_of(folder)  # what a full disk names
    parts = _Parts(out_root / f"{key}{PARTS_SUFFIX}", root)
    manifest = _manifest_ok(folder)
    if manifest is not None:
        parts.remove()  # left by a call killed after its output was in place
        return AugmentResult(folder / TRANSFER_FILE, key, len(examples), manifest["rows"],
                             manifest["stats"], time.perf_counter() - t0, True,
                             _total_seconds(manifest))
    task = task or data_key.split(":", 1)[0]
    tags_file = kept = nltk_paths = None
    if cfg.enabled:
        tags_key = tags_cache_key(data_key, mask_token, cfg.max_words)
        tags_file = out_root / TAGS_DIR / f"{tags_key}.json"
        kept = _read_tags(tags_file, len(examples))
        if kept is None:  # fail before any work, with the download calls; workers get the path
            nltk_paths = aug.check_nltk_data(cfg.nltk_data)
    if folder.exists():  # incomplete or altered output: rebuild
        shutil.rmtree(folder)

    ordered = sorted(examples, key=lambda e: int(e.id))
    chunks = _chunks(ordered, cfg.chunk_size)
    # originals only (disabled) is too little work to pay for Ray
    parallel = cfg.enabled and cfg.num_workers > 1 and len(chunks) > 1
    if parallel:
        import ray

        _ensure_ray()
        free = ray.available_resources().get("CPU", 0.0)
        if free < 1.0:  # long-lived actors hold every CPU: Ray tasks would wait forever
            logger.warning("augment: %.2f CPU free in the Ray cluster, fewer than one task "
                           "needs; running inline instead (same output)", free)
            parallel = False
    clock = _Seconds(uuid.uuid4().hex[:12], t0)
    run = _Run(mask_token, pair_mode, progress, nltk_paths, parallel, clock, root, task, log)
    computed = 0
    if not cfg.enabled:
        cols, st = _disabled_chunk(ordered, cfg, mask_token)
        table = _table(cols)
    else:
        if kept is not None:
            counts, flat = kept
            chunk_tags = _chunks(flat, cfg.chunk_size)
            earlier = parts.read_json(TAGGING_RECORD)  # tagged for this output by a killed call
            for call, spent in ((earlier or {}).get("seconds_by_call") or {}).items():
                clock.add(clock.tagging, call, spent)
        else:
            tag_parts = _Parts(out_root / TAGS_DIR / f"{tags_key}{PARTS_SUFFIX}", root)
            counts, chunk_tags = _tag(chunks, cfg, run, tag_parts)
            _write_tags(tags_file, counts, [t for c in chunk_tags for t in c],
                        sum(clock.tagging.values()), root)
            parts.write_json(TAGGING_RECORD, {"seconds_by_call": clock.tagging})
            tag_parts.remove()
        lexicon = aug.PosLexicon(counts)
        tables, st, computed = _augment(chunks, chunk_tags, lexicon, cfg, run, parts)
        table = _single_table(tables)
        del tables
    table, cap_dropped = _cap_table(table, cfg.max_examples, cfg.seed)
    stats: dict[str, Any] = st.to_dict()
    stats["examples_in"] = len(examples)
    stats["cap_dropped"] = cap_dropped
    stats["rows_out"] = table.num_rows
    cfg_dict = {k: v for k, v in vars(cfg).items() if k not in ("num_workers", "chunk_size")}
    manifest = {
        "key": key,
        "data_key": data_key,
        "stage_version": STAGE_VERSION,
        "rules_version": aug.RULES_VERSION,
        "mask_token": mask_token,
        "pair_mode": pair_mode,
        "config": cfg_dict,
        "stats": stats,
        "columns": COLUMNS,
    }
    summary: dict[str, float] = {}

    def seconds() -> dict:
        summary.update(clock.summary())
        return summary

    with atomic_dir(folder, root=root) as tmp:
        _write(tmp, table, manifest, seconds)
    parts.remove()
    return AugmentResult(folder / TRANSFER_FILE, key, len(examples), stats["rows_out"], stats,
                         time.perf_counter() - t0, False, summary["total"], computed,
                         len(chunks) - computed if cfg.enabled else 0)
