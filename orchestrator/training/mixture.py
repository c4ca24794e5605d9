"""MKD task mixtures: which task each training step draws its batch from."""
from __future__ import annotations

import numpy as np


class MixtureError(ValueError):
    pass


def mixture_weights(sizes: dict[str, int], kind: str = "proportional", tau: float = 1.0,
                    weights: dict[str, float] | None = None) -> dict[str, float]:
    """Normalized sampling probability per task.

    proportional: |d_t|; temperature: |d_t|^tau (tau < 1 flattens toward uniform); uniform;
    weights: explicit, non-negative, not all zero, one per task.
    """
    if not sizes:
        raise MixtureError("no tasks to mix")
    if kind == "proportional":
        raw = {t: float(n) for t, n in sizes.items()}
    elif kind == "temperature":
        if tau <= 0:
            raise MixtureError(f"mixture temperature tau={tau} must be > 0")
        raw = {t: float(n) ** tau for t, n in sizes.items()}
    elif kind == "uniform":
        raw = {t: 1.0 for t in sizes}
    elif kind == "weights":
        if not weights:
            raise MixtureError("mixture=weights needs train.mixture_weights (task: weight)")
        missing = sorted(set(sizes) - set(weights))
        extra = sorted(set(weights) - set(sizes))
        if missing or extra:
            raise MixtureError(f"mixture weights must name exactly the tasks {sorted(sizes)}; "
                               f"missing {missing}, unknown {extra}")
        neg = {t: w for t, w in weights.items() if w < 0}
        if neg:
            raise MixtureError(f"mixture weights must be >= 0; got {neg}")
        raw = {t: float(weights[t]) for t in sizes}
    else:
        raise MixtureError(f"unknown mixture {kind!r}: proportional, temperature, uniform, weights")
    total = sum(raw.values())
    if total <= 0:
        raise MixtureError("mixture weights are all zero")
    return {t: v / total for t, v in raw.items()}


class TaskSampler:
    """Draws a task per step with the given probabilities; the same seed gives the same sequence
    on every data-parallel worker."""

    def __init__(self, probs: dict[str, float], seed: int = 0):
        self.tasks = list(probs)
        self.p = np.array([probs[t] for t in self.tasks], dtype=np.float64)
        self.rng = np.random.default_rng(seed)

    def draw(self, n: int) -> list[str]:
        return [self.tasks[i] for i in self.rng.choice(len(self.tasks), size=n, p=self.p)]
