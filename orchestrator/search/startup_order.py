"""The searcher's random startup draws, run cheapest first.

TPE draws its first ``n_startup_trials`` configurations at random, independently of any result,
so their order is free. Asynchronous successive halving is not indifferent to it: the first trial
to reach a rung has nothing to be compared with and always goes on, and a trial is judged only
against the trials that reached its rung before it. Drawn in Optuna's order, a search often opens
with its most expensive student, which then runs to its last epoch unjudged; run cheapest first,
the free passes go to cheap trials and the expensive ones meet full rungs.

``CheapestFirst`` wraps a Tune searcher: on its first suggestion it draws the startup batch at once
(the same configurations, in the same random sequence, as drawing them one by one), sorts them by
``cost`` (a function of the configuration; :class:`TrainingWork` estimates the work of a trial)
and hands them out in that order, then defers to the searcher. Trial ids are mapped to the
searcher's own; the queue and the map are saved in Tune's search state, so a resumed search
keeps them.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from ray.tune.search import Searcher

from students.registry import student_kind


class CheapestFirst(Searcher):
    """Hands out ``searcher``'s first ``batch`` suggestions sorted by ``cost`` (ties: drawn order)."""

    def __init__(self, searcher: Searcher, batch: int, cost: Callable[[dict], float],
                 log: Callable[[str], None] | None = None):
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher, self.batch, self.cost = searcher, int(batch), cost
        self.log = log  # told the order once it is drawn; not pickled
        self.queue: list[tuple[str, dict]] | None = None  # None until the first suggestion
        self.drawn: list[tuple[str, float]] = []  # (searcher's id, estimated cost), drawn order
        self._ids: dict[str, str] = {}  # Tune trial id -> the searcher's id for it

    # -- Tune's Searcher interface ------------------------------------------------------------

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        ok = self.searcher.set_search_properties(metric, mode, config, **spec)
        self._metric, self._mode = self.searcher.metric, self.searcher.mode
        return ok

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return self.searcher.set_max_concurrency(max_concurrent)

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.queue is None:
            self.queue = self._draw_batch()
        if self.queue:
            inner_id, config = self.queue.pop(0)
        else:
            inner_id, config = trial_id, self.searcher.suggest(trial_id)
        if isinstance(config, dict):
            self._ids[trial_id] = inner_id
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(self._ids.get(trial_id, trial_id), result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        self.searcher.on_trial_complete(self._ids.get(trial_id, trial_id), result=result,
                                        error=error)

    def on_pause(self, trial_id: str) -> None:
        self.searcher.on_pause(self._ids.get(trial_id, trial_id))

    def on_unpause(self, trial_id: str) -> None:
        self.searcher.on_unpause(self._ids.get(trial_id, trial_id))

    # Tune saves a wrapper (anything with a ``searcher``) as get_state() in its search state and
    # the innermost searcher on its own (save/restore), as for ConcurrencyLimiter
    def get_state(self) -> dict:
        return copy.deepcopy({"queue": self.queue, "drawn": self.drawn, "_ids": self._ids})

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "log": None}

    # -- the batch ----------------------------------------------------------------------------

    def _cost(self, k: int, config: dict) -> float:
        """The estimate is advisory: a configuration it cannot price (its trial will fail or
        report its own error) runs after the others instead of failing the search."""
        try:
            return float(self.cost(config))
        except Exception as e:  # noqa: BLE001
            if self.log:
                self.log(f"[tune] startup draw {k + 1}: work not estimated ({type(e).__name__}: "
                         f"{e}); it runs after the others")
            return math.inf

    def _draw_batch(self) -> list[tuple[str, dict]]:
        batch = []
        for k in range(self.batch):
            inner_id = f"startup-{k}"
            config = self.searcher.suggest(inner_id)
            if not isinstance(config, dict):  # finished or waiting: hand out what there is
                break
            batch.append((inner_id, config))
        self.drawn = [(i, self._cost(k, c)) for k, (i, c) in enumerate(batch)]
        order = cheapest_order(self.drawn)
        if self.log:
            self.log(f"[tune] {describe(self)}")
        return [batch[k] for k in order]


@dataclass
class TrainingWork:
    """Estimated work of a trial: epochs x transfer-set rows x the student's non-embedding
    parameters (the multiply-adds of a forward and backward pass scale with them per token).
    A ranking, not a time: every trial of a search is estimated the same way.

    ``tasks``: per task, ``(training examples, is_pair, head width)``."""

    space: Any  # search_spaces.loader.SearchSpace
    overrides: dict[str, Any]
    tasks: dict[str, tuple[int, bool, int]]
    _dims: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def __call__(self, sample: dict) -> float:
        from orchestrator.config import apply_sample

        cfg = apply_sample(self.space, sample, self.overrides)
        return float(cfg.train.epochs) * self.rows(cfg) * self.student_params(cfg)

    def rows(self, cfg) -> float:
        """Transfer-set rows per epoch: each example and its augmented samples, capped."""
        from tasks.augment import n_iter_for

        if cfg.train.steps_per_epoch:
            return float(cfg.train.steps_per_epoch * cfg.train.batch_size)
        total = 0.0
        for n, pair, _ in self.tasks.values():
            rows = n * (1 + n_iter_for(cfg.augment, pair)) if cfg.augment.enabled else n
            cap = cfg.augment.max_examples if cfg.augment.enabled else None
            total += min(rows, cap) if cap else rows
        return total

    def student_params(self, cfg) -> float:
        from dataclasses import replace

        from students.factory import build_student, count_parameters

        student = cfg.student
        if student.embeddings and student_kind(student.arch).words:
            student = replace(student, embeddings=None,
                              embed_dim=self._dim(student.embeddings, cfg.teacher.model))
        heads = {t: outputs for t, (_, _, outputs) in self.tasks.items()}
        pair = any(p for _, p, _ in self.tasks.values())
        model = build_student(student, 2, heads, pair)
        return float(max(count_parameters(model)["non_embedding"], 1))

    def _dim(self, path: str, teacher_model: str) -> int:
        """Word-vector size of the embeddings file, or of the base model's input embeddings for
        ``teacher`` (read once per path or model)."""
        from orchestrator.config import TEACHER_EMBEDDINGS, resolve_embeddings
        from tasks.embeddings import vector_dim

        if path == TEACHER_EMBEDDINGS:
            from orchestrator.teachers.teacher_vectors import input_embedding_dim

            key = f"{TEACHER_EMBEDDINGS}:{teacher_model}"
            if key not in self._dims:
                self._dims[key] = input_embedding_dim(teacher_model)
            return self._dims[key]
        if path not in self._dims:
            self._dims[path] = vector_dim(resolve_embeddings(path))
        return self._dims[path]


def startup_batch(startup_trials: int, num_samples: int) -> int:
    """The draws that are random whatever the results: the sampler's startup trials, at most the
    search's samples (a negative num_samples: Tune's 'until stopped')."""
    if num_samples < 0:
        return startup_trials
    return max(0, min(startup_trials, num_samples))


def cheapest_order(drawn: list[tuple[str, float]]) -> list[int]:
    """Positions of ``(id, cost)`` draws by cost, ties in drawn order."""
    return sorted(range(len(drawn)), key=lambda k: (drawn[k][1], k))


def describe(searcher: CheapestFirst) -> str:
    if not searcher.drawn:
        return "no startup draws"
    order = cheapest_order(searcher.drawn)
    return ("startup draws run cheapest first, in drawn positions "
            + ", ".join(str(k + 1) for k in order)
            + f" (estimated work {searcher.drawn[order[0]][1]:.3g} to "
            f"{searcher.drawn[order[-1]][1]:.3g})")
