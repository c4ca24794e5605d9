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

Output, under ``<out_root>/<key>/`` (written through :func:`orchestrator.keys.atomic_dir`, with
``manifest.json`` written last):

* ``transfer.parquet``: columns ``example_id`` int64, ``aug_index`` int32 (0 = the original),
  ``text_a`` string, ``text_b`` string (null for single sentences), ``label`` float64 (the gold
  label on originals, null on augmented rows), sorted by ``(example_id, aug_index)``;
* ``manifest.json``: key, row count, SHA-256 of the Parquet file, the stats and the config.

A later call with the same key reuses the output when the manifest's row count and checksum
match the file; otherwise the folder is removed and rebuilt.

``cfg.max_examples`` caps the number of rows: every original is kept first (if the cap is below
their number, a seeded random subset of originals is kept), then augmented rows in a random
order drawn from ``default_rng([seed, 0x7ca9])`` over the sorted rows, so the cap is
deterministic. ``aug_index`` values of kept rows are unchanged (gaps are possible).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.config import AugmentConfig
from orchestrator.keys import atomic_dir, atomic_file, content_key, file_digest
from tasks import augment as aug
from tasks.data import Example
from tasks.text import DEFAULT_MASK

log = logging.getLogger(__name__)

STAGE_VERSION = 1  # bump when the file layout or the cap rule changes
TRANSFER_FILE = "transfer.parquet"
MANIFEST_FILE = "manifest.json"
TAGS_DIR = "pos_tags"  # <out_root>/pos_tags/<key>.json: the POS tags of one training set
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
    seconds: float = 0.0
    reused: bool = False


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
    except Exception:  # unreadable manifest or Parquet file: rebuild
        return None
    return manifest


# ---------------------------------------------------------------------------------------------
# the work, shared by the inline and the Ray paths


def _tag_chunk(examples: list[Example], nltk_paths: list[str] | None, mask_token: str,
               max_words: int):
    tagger = aug.nltk_tagger(nltk_paths)
    tags = aug.tag_examples(examples, tagger, mask_token, max_words)
    counts = aug.count_tagged(examples, tags, mask_token)
    return {t: dict(c) for t, c in counts.items()}, tags


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


def _disabled_chunk(examples, cfg, mask_token):
    rows, stats = aug.augment_disabled(examples, cfg, mask_token)
    return _rows_to_columns(rows), stats


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex", disable=not enabled, leave=False)


_REMOTE: dict[str, Any] = {}


def _remote(name: str):
    """Ray remote wrappers of the chunk functions, made once."""
    import ray

    if not _REMOTE:
        # "DEFAULT": run outside the caller's placement group (e.g. a Tune trial's token share)
        _REMOTE["tag"] = ray.remote(num_cpus=1, num_returns=2,
                                    scheduling_strategy="DEFAULT")(_tag_chunk)
        _REMOTE["augment"] = ray.remote(num_cpus=1, scheduling_strategy="DEFAULT")(_augment_chunk)
    return _REMOTE[name]


def _ensure_ray() -> None:
    from orchestrator.ray_runtime import init_ray

    init_ray(log=lambda m: None)  # a no-op when Ray is up; else the same rule as every stage


def _run_bounded(submit, n_tasks: int, limit: int, sizes: list[int], bar) -> list:
    """Submit ``submit(i)`` for i < n_tasks with at most ``limit`` in flight; results in order.

    ``submit`` returns an object ref, or a tuple of refs whose first one signals completion.
    """
    import ray

    results: list = [None] * n_tasks
    pending: dict[Any, int] = {}
    nxt = 0
    while nxt < n_tasks or pending:
        while nxt < n_tasks and len(pending) < limit:
            out = submit(nxt)
            results[nxt] = out
            first = out[0] if isinstance(out, (list, tuple)) else out
            pending[first] = nxt
            nxt += 1
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            bar.update(sizes[pending.pop(ref)])
    return results


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


def _write_tags(path: Path, counts: dict, tags: list) -> None:
    with atomic_file(path, "w") as f:
        json.dump({"counts": counts, "tags": tags}, f)


def _tag(chunks: list[list[Example]], cfg: AugmentConfig, mask_token: str,
         nltk_paths: list[str] | None, parallel: bool, progress: bool) -> tuple[dict, list]:
    """POS-tag every chunk (in Ray tasks when ``parallel``): (merged counts, tags per chunk)."""
    with _progress(sum(len(c) for c in chunks), "augment: tagging", progress) as bar:
        if parallel:
            import ray

            refs = _run_bounded(
                lambda i: _remote("tag").remote(chunks[i], nltk_paths, mask_token, cfg.max_words),
                len(chunks), cfg.num_workers, [len(c) for c in chunks], bar)
            tagged = [(ray.get(c), ray.get(t)) for c, t in refs]
        else:
            tagged = []
            for c in chunks:
                tagged.append(_tag_chunk(c, nltk_paths, mask_token, cfg.max_words))
                bar.update(len(c))
    counts = aug.merge_counts(t[0] for t in tagged)
    return {t: dict(c) for t, c in counts.items()}, [t[1] for t in tagged]


def _compute(examples: list[Example], cfg: AugmentConfig, mask_token: str, pair_mode: str,
             progress: bool, nltk_paths: list[str] | None,
             tags_file: Path | None = None,
             kept: tuple[dict, list] | None = None) -> tuple[dict[str, list], aug.AugmentStats]:
    """The transfer set's columns and stats. ``tags_file``: where the examples' POS tags are
    kept between calls (tagging is most of the work for a small training set; the tags do not
    depend on the rule parameters a search varies); ``kept``: what it held (``_read_tags``)."""
    chunks = _chunks(examples, cfg.chunk_size)
    sizes = [len(c) for c in chunks]
    # originals only (disabled) is too little work to pay for Ray
    parallel = cfg.enabled and cfg.num_workers > 1 and len(chunks) > 1
    if parallel:
        import ray

        _ensure_ray()
        free = ray.available_resources().get("CPU", 0.0)
        if free < 1.0:  # long-lived actors hold every CPU: Ray tasks would wait forever
            log.warning("augment: %.2f CPU free in the Ray cluster, fewer than one task needs; "
                        "running inline instead (same output)", free)
            parallel = False
    parts: list[tuple[dict[str, list], aug.AugmentStats]]
    if not cfg.enabled:
        parts = [_disabled_chunk(examples, cfg, mask_token)]
    else:
        if kept is not None:
            counts, flat = kept
            chunk_tags = _chunks(flat, cfg.chunk_size)
        else:
            counts, chunk_tags = _tag(chunks, cfg, mask_token, nltk_paths, parallel, progress)
            if tags_file is not None:
                _write_tags(tags_file, counts, [t for c in chunk_tags for t in c])
        lexicon = aug.PosLexicon(counts)
        with _progress(len(examples), "augment: sampling", progress) as bar:
            if parallel:
                refs = [ray.put(c) for c in chunks]
                lex_ref = ray.put(lexicon)
                outs = _run_bounded(
                    lambda i: _remote("augment").remote(refs[i], chunk_tags[i], lex_ref, cfg,
                                                        mask_token, pair_mode),
                    len(chunks), cfg.num_workers, sizes, bar)
                parts = ray.get(outs)
                del refs, lex_ref
            else:
                parts = []
                for c, tags in zip(chunks, chunk_tags):
                    parts.append(_augment_chunk(c, tags, lexicon, cfg, mask_token, pair_mode))
                    bar.update(len(c))
    columns: dict[str, list] = {c: [] for c in COLUMNS}
    stats = aug.AugmentStats()
    for cols, st in parts:
        for c in COLUMNS:
            columns[c].extend(cols[c])
        stats.merge(st)
    return columns, stats


def _cap(columns: dict[str, list], cap: int | None, seed: int) -> tuple[dict[str, list], int]:
    """Keep at most ``cap`` rows: originals first, then augmented rows in a seeded order."""
    n = len(columns["example_id"])
    if cap is None or n <= cap:
        return columns, 0
    rng = np.random.default_rng([seed, _CAP_SALT])
    aug_index = np.asarray(columns["aug_index"])
    orig = np.flatnonzero(aug_index == 0)
    extra = np.flatnonzero(aug_index != 0)
    if cap <= len(orig):
        keep = rng.permutation(orig)[:cap]
    else:
        keep = np.concatenate([orig, rng.permutation(extra)[: cap - len(orig)]])
    keep = np.sort(keep)  # rows are sorted by (example_id, aug_index): index order keeps that
    return {c: [columns[c][i] for i in keep.tolist()] for c in COLUMNS}, n - len(keep)


def _write(folder: Path, columns: dict[str, list], manifest: dict[str, Any]) -> None:
    table = pa.table({c: pa.array(columns[c], type=SCHEMA.field(c).type) for c in COLUMNS},
                     schema=SCHEMA)
    path = folder / TRANSFER_FILE
    pq.write_table(table, path, compression="zstd")
    manifest = dict(manifest, rows=table.num_rows, sha256=file_digest(path, 64))
    with atomic_file(folder / MANIFEST_FILE, "w") as f:  # last: marks the folder complete
        json.dump(manifest, f, indent=2, sort_keys=True)


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
) -> AugmentResult:
    """Build (or reuse) the transfer set of ``examples``; see the module docstring.

    ``data_key`` identifies the examples' content (the caller's data hash). ``mask_token`` is the
    teacher tokenizer's mask token. With ``cfg.enabled`` False the transfer set is the originals.
    Raises ``ValueError`` naming the field for a bad config, and
    :class:`tasks.augment.NltkDataMissingError` before any work when NLTK data is missing.
    """
    t0 = time.perf_counter()
    aug.validate_config(cfg, pair_mode)
    if not mask_token or any(ch.isspace() for ch in mask_token):
        raise ValueError(f"mask_token={mask_token!r} must be a non-empty word without spaces")
    examples = list(examples)
    aug.check_examples(examples)
    key = augment_cache_key(cfg, data_key, mask_token, pair_mode)
    folder = Path(out_root) / key
    manifest = _manifest_ok(folder)
    if manifest is not None:
        return AugmentResult(folder / TRANSFER_FILE, key, len(examples), manifest["rows"],
                             manifest["stats"], time.perf_counter() - t0, True)
    tags_file = kept = nltk_paths = None
    if cfg.enabled:
        tags_key = tags_cache_key(data_key, mask_token, cfg.max_words)
        tags_file = Path(out_root) / TAGS_DIR / f"{tags_key}.json"
        kept = _read_tags(tags_file, len(examples))
        if kept is None:  # fail before any work, with the download calls; workers get the path
            nltk_paths = aug.check_nltk_data(cfg.nltk_data)
    if folder.exists():  # incomplete or altered output: rebuild
        shutil.rmtree(folder)

    ordered = sorted(examples, key=lambda e: int(e.id))
    columns, st = _compute(ordered, cfg, mask_token, pair_mode, progress, nltk_paths, tags_file,
                           kept)
    columns, cap_dropped = _cap(columns, cfg.max_examples, cfg.seed)
    stats: dict[str, Any] = st.to_dict()
    stats["examples_in"] = len(examples)
    stats["cap_dropped"] = cap_dropped
    stats["rows_out"] = len(columns["example_id"])
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
    with atomic_dir(folder) as tmp:
        _write(tmp, columns, manifest)
    return AugmentResult(folder / TRANSFER_FILE, key, len(examples), stats["rows_out"], stats,
                         time.perf_counter() - t0, False)
