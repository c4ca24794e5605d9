"""Batches of similar lengths, the one implementation every stage uses (pure: no Ray, no torch).

Sequences are grouped by length so that little compute is spent on padding. Every grouping
orders indices with :func:`by_length` (a stable sort: equal lengths keep the order given):

- :func:`length_sorted_batches`: a whole set, shortest (or longest) first, in fixed-size
  batches: teacher and student dev evaluation, the teacher pool's chunks;
- :func:`length_grouped_batches`: training batches from a shuffled order, sorted by length
  inside windows of a few dozen batches (the teacher's fine-tuning, the student's batch
  streams; each caller shuffles with its own generator before and after);
- :func:`token_budget_batches`: teacher inference in the actors: a batch's cost is
  ``max_len_in_batch * batch_size`` padded tokens, and each batch stays within
  ``token_budget``. Batches come out longest first, so a batch that does not fit in memory
  fails at once rather than at the end of a long run. Results are put back in input order with
  :func:`restore_order`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def by_length(indices: Sequence[int], lengths: Sequence[int] | Callable[[int], int],
              descending: bool = False) -> list[int]:
    """``indices`` ordered by their length (``lengths[i]``, or ``lengths(i)``), shortest first
    (longest with ``descending``); equal lengths keep the order of ``indices``."""
    length = lengths if callable(lengths) else lengths.__getitem__
    return sorted(indices, key=(lambda i: -length(i)) if descending else length)


def cut(order: Sequence[int], size: int) -> list[list[int]]:
    """``order`` in consecutive batches of ``size`` (the last one may be smaller)."""
    return [list(order[j:j + size]) for j in range(0, len(order), size)]


def length_sorted_batches(lengths: Sequence[int], batch_size: int,
                          descending: bool = False) -> list[list[int]]:
    """Every index of ``lengths`` once, shortest first (longest with ``descending``), in batches
    of ``batch_size``."""
    return cut(by_length(range(len(lengths)), lengths, descending), batch_size)


def length_grouped_batches(order: Sequence[int], lengths: Sequence[int] | Callable[[int], int],
                           batch_size: int, window: int) -> list[list[int]]:
    """Training batches of similar lengths: ``order`` (already shuffled) cut into windows of
    ``window`` batches, each window sorted by length (:func:`by_length`) and cut into batches of
    ``batch_size``, in window order. The caller shuffles the batches."""
    span = batch_size * window
    batches: list[list[int]] = []
    for s in range(0, len(order), span):
        batches += cut(by_length(order[s:s + span], lengths), batch_size)
    return batches


def token_budget_batches(lengths: Sequence[int], token_budget: int,
                         max_batch_size: int) -> list[list[int]]:
    """Group indices of ``lengths`` into batches whose padded size fits ``token_budget``.

    Indices are sorted by length (longest first, ties in input order) and cut greedily: a batch
    grows while ``max_len_in_batch * n <= token_budget`` and ``n <= max_batch_size``. An item that
    alone exceeds the budget still gets a batch of its own. Every index appears exactly once.
    Lengths of 0 count as 1 (a batch always costs at least one token per row).
    """
    if token_budget < 1:
        raise ValueError(f"token_budget={token_budget} must be at least 1")
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size={max_batch_size} must be at least 1")
    if any(int(n) < 0 for n in lengths):
        raise ValueError("lengths must be non-negative")
    lens = [max(1, int(n)) for n in lengths]
    order = by_length(range(len(lens)), lens, descending=True)
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0  # longest item in `current` (the first one, as the order is descending)
    for i in order:
        if current and (width * (len(current) + 1) > token_budget
                        or len(current) >= max_batch_size):
            batches.append(current)
            current = []
        if not current:
            width = lens[i]
        current.append(i)
    if current:
        batches.append(current)
    return batches


def flat_order(batches: Sequence[Sequence[int]]) -> list[int]:
    """The permutation the batches visit: ``flat_order(b)[k]`` is the input index of output k."""
    return [i for b in batches for i in b]


def restore_order(batches: Sequence[Sequence[int]], outputs: Sequence[np.ndarray]) -> np.ndarray:
    """Stack per-batch outputs (row ``k`` of ``outputs[j]`` belongs to ``batches[j][k]``) back
    into input order. Batches must cover ``0..N-1`` exactly once."""
    if len(batches) != len(outputs):
        raise ValueError(f"{len(batches)} batches but {len(outputs)} outputs")
    perm = flat_order(batches)
    n = len(perm)
    if sorted(perm) != list(range(n)):
        raise ValueError("batches must cover every index 0..N-1 exactly once")
    for b, o in zip(batches, outputs):
        if len(o) != len(b):
            raise ValueError(f"a batch of {len(b)} indices got {len(o)} output rows")
    if n == 0:
        return np.zeros((0,), dtype=np.float32)
    stacked = np.concatenate([np.asarray(o) for o in outputs], axis=0)
    out = np.empty_like(stacked)
    out[np.asarray(perm, dtype=np.int64)] = stacked
    return out
