"""Teacher logits fetched the first time a training row is used (``train.soft_labels=on_demand``).

With precomputed labels a trial pays the teacher for its whole transfer set before its first
step, so a trial that ASHA stops a quarter of the way into its first epoch has paid for four
times the labels it used. Here the Train worker asks the teacher pool (through a
:class:`~orchestrator.teachers.teacher_pool.PoolClient`) for the rows of its next few batches
only, looking them up in the soft-label cache first. New labels are written back to the cache before every
report to Tune (:meth:`OnDemandLogits.flush`), so what a stopped or killed trial paid for is
kept for the trials after it.

Each row is labeled once per trial; later epochs read the labels held in memory.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from orchestrator.teachers.cache import SoftLabelCache, text_keys


class OnDemandLogits:
    """The logits of one training split, ``values`` [N, C] (NaN until a row is labeled)."""

    def __init__(self, texts_a: Sequence[str], texts_b: Sequence[str | None] | None, n_out: int,
                 client, cache: SoftLabelCache, head: str, max_length: int,
                 flush_rows: int = 20_000):
        self.texts_a = list(texts_a)
        self.texts_b = list(texts_b) if texts_b is not None else None
        self.keys = text_keys(self.texts_a, self.texts_b)
        self.values = np.full((len(self.keys), n_out), np.nan, dtype=np.float32)
        self.have = np.zeros(len(self.keys), dtype=bool)
        self.client, self.cache = client, cache
        self.head, self.max_length = head, int(max_length)
        self.flush_rows = flush_rows
        self._unsaved: dict[str, np.ndarray] = {}
        self.hits = self.misses = 0
        self.seconds = 0.0

    def ensure(self, rows) -> None:
        """Make sure ``rows`` have logits: cache first, then the teacher pool."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        need = rows[~self.have[rows]]
        if need.size == 0:
            return
        t0 = time.perf_counter()
        by_key: dict[str, list[int]] = {}
        for i in need.tolist():
            by_key.setdefault(self.keys[i], []).append(i)
        found, missing = self.cache.lookup(list(by_key))
        found.update({k: self._unsaved[k] for k in missing if k in self._unsaved})
        missing = [k for k in missing if k not in found]
        if missing:
            first = [by_key[k][0] for k in missing]
            res = self.client.label_texts(
                [self.texts_a[i] for i in first],
                [self.texts_b[i] for i in first] if self.texts_b is not None else None,
                head=self.head, max_length=self.max_length, cache=None, progress=False)
            for k, row in zip(missing, res.logits):
                found[k] = row
                self._unsaved[k] = row
        labeled_now = set(missing)
        for k, idx in by_key.items():
            self.values[idx] = found[k]
            self.have[idx] = True
            if k in labeled_now:
                self.misses += len(idx)
            else:
                self.hits += len(idx)
        self.seconds += time.perf_counter() - t0
        if len(self._unsaved) >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        """Write the labels computed since the last flush to the soft-label cache."""
        if self._unsaved:
            self.cache.put(self._unsaved)
            self._unsaved = {}

    @property
    def labeled_fraction(self) -> float:
        return float(self.have.mean()) if len(self.have) else 1.0

    def stats(self) -> dict[str, float]:
        return {"label_cache_hits": float(self.hits), "label_cache_misses": float(self.misses),
                "label_seconds": self.seconds, "labeled_fraction": self.labeled_fraction}


def merge_stats(labels: dict[str, OnDemandLogits]) -> dict[str, float]:
    """The stats of several tasks' labels as one set of metrics (fraction: of all rows)."""
    if not labels:
        return {}
    out = {"label_cache_hits": 0.0, "label_cache_misses": 0.0, "label_seconds": 0.0}
    for lab in labels.values():
        stats = lab.stats()
        for k in out:
            out[k] += stats[k]
    rows = sum(len(lab.have) for lab in labels.values())
    out["labeled_fraction"] = (sum(float(lab.have.sum()) for lab in labels.values()) / rows
                               if rows else 1.0)
    return out
