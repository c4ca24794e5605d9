"""GLUE metrics in plain numpy.

Each metric takes ``(y_true, y_pred)`` like scikit-learn. Degenerate inputs (constant predictions
or labels, NaN) give 0.0 instead of NaN and never emit warnings. ``compute_metrics`` turns model
outputs into the task's metrics plus ``score``: the mean of them, as the GLUE leaderboard does.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from numpy.typing import ArrayLike

from tasks.registry import TaskSpec


def _pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true).ravel()
    p = np.asarray(y_pred).ravel()
    if t.shape != p.shape:
        raise ValueError(f"labels and predictions differ in length: {t.size} vs {p.size}")
    if t.size == 0:
        raise ValueError("cannot compute a metric on zero examples")
    return t, p


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Fraction of exact matches."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(t == p))


def f1(y_true: ArrayLike, y_pred: ArrayLike, positive: int = 1) -> float:
    """Binary F1 of class ``positive`` (other classes count as negative); 0.0 when undefined."""
    t, p = _pair(y_true, y_pred)
    tp = float(np.sum((t == positive) & (p == positive)))
    fp = float(np.sum((t != positive) & (p == positive)))
    fn = float(np.sum((t == positive) & (p != positive)))
    denom = 2 * tp + fp + fn
    return 0.0 if denom == 0 else 2 * tp / denom


def matthews_corrcoef(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Matthews correlation (multi-class form of Gorodkin 2004); 0.0 when undefined."""
    t, p = _pair(y_true, y_pred)
    classes, inv = np.unique(np.concatenate([t, p]), return_inverse=True)
    k = len(classes)
    ti, pi = inv[: t.size], inv[t.size:]
    conf = np.zeros((k, k), dtype=np.float64)
    np.add.at(conf, (ti, pi), 1.0)
    true_counts = conf.sum(axis=1)
    pred_counts = conf.sum(axis=0)
    correct = np.trace(conf)
    n = conf.sum()
    cov_tp = correct * n - true_counts @ pred_counts
    cov_pp = n * n - pred_counts @ pred_counts
    cov_tt = n * n - true_counts @ true_counts
    if cov_pp == 0 or cov_tt == 0:
        return 0.0
    return float(cov_tp / np.sqrt(cov_tt * cov_pp))


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return 0.0
    xm = x - x.mean()
    ym = y - y.mean()
    denom = np.sqrt(np.dot(xm, xm) * np.dot(ym, ym))
    if denom == 0 or not np.isfinite(denom):
        return 0.0
    return float(np.clip(np.dot(xm, ym) / denom, -1.0, 1.0))


def pearson(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Pearson correlation; 0.0 when either side is constant or not finite."""
    t, p = _pair(y_true, y_pred)
    return _correlation(t.astype(np.float64), p.astype(np.float64))


def rank_average(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (scipy's ``rankdata`` default)."""
    n = x.size
    order = np.argsort(x, kind="mergesort")
    ordered = x[order]
    starts_group = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    group = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.concatenate([starts[1:], [n]])
    mean_rank = (starts + ends + 1) / 2.0  # average of the 1-based ranks start+1 .. end
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = mean_rank[group]
    return ranks


def spearman(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Spearman rank correlation; 0.0 when either side is constant or not finite."""
    t, p = _pair(y_true, y_pred)
    t = t.astype(np.float64)
    p = p.astype(np.float64)
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(p))):
        return 0.0
    return _correlation(rank_average(t), rank_average(p))


METRICS: dict[str, Callable[[ArrayLike, ArrayLike], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
}


def predicted_values(task: TaskSpec, predictions: ArrayLike) -> np.ndarray:
    """Model outputs -> class indices (argmax of N x C logits) or regression values (N or N x 1)."""
    pred = np.asarray(predictions)
    if task.is_regression:
        if pred.ndim == 2 and pred.shape[1] == 1:
            pred = pred[:, 0]
        if pred.ndim != 1:
            raise ValueError(f"task {task.name} is regression: expected predictions of shape "
                             f"(N,) or (N, 1), got {pred.shape}")
        return pred.astype(np.float64)
    if pred.ndim == 2:
        if pred.shape[1] != task.num_outputs:
            raise ValueError(f"task {task.name} has {task.num_outputs} classes but the logits "
                             f"have {pred.shape[1]} columns")
        return np.argmax(pred, axis=1)
    if pred.ndim == 1 and (pred.size == 0 or np.all(np.equal(np.mod(pred, 1), 0))):
        return pred.astype(np.int64)  # already class indices
    raise ValueError(f"task {task.name}: expected N x {task.num_outputs} logits or N class "
                     f"indices, got an array of shape {pred.shape}")


def compute_metrics(task: TaskSpec, predictions: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """Each of ``task.metrics`` plus ``score`` (their mean)."""
    pred = predicted_values(task, predictions)
    lab = np.asarray(labels)
    if lab.dtype == object:
        if any(x is None for x in lab.ravel()):
            raise ValueError(f"task {task.name}: some labels are missing (None); "
                             "only labelled examples can be scored")
        lab = lab.astype(np.float64)
    if not task.is_regression:
        lab = lab.astype(np.int64)
    out = {name: METRICS[name](lab, pred) for name in task.metrics}
    out["score"] = float(np.mean([out[name] for name in task.metrics]))
    return out


def trivial_score(task: TaskSpec, train_labels: ArrayLike, dev_labels: ArrayLike) -> float:
    """The ``score`` of a model that ignores its input: it always predicts the training set's most
    frequent class (classification) or its mean (regression; correlations of a constant are 0).
    A student must beat it to be worth anything, however fast it is."""
    train = np.asarray([x for x in np.asarray(train_labels, dtype=object).ravel() if x is not None])
    dev = np.asarray(dev_labels)
    if task.is_regression:
        value = float(np.mean(train.astype(np.float64))) if train.size else 0.0
        return compute_metrics(task, np.full(len(dev), value), dev)["score"]
    counts = np.bincount(train.astype(np.int64), minlength=task.num_outputs) if train.size else [1]
    return compute_metrics(task, np.full(len(dev), int(np.argmax(counts)), np.int64), dev)["score"]
