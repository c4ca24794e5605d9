"""Task heads shared by every student, and the small base class that all students extend.

A head maps a sentence (or sentence-pair) feature vector to ``n`` outputs: ``n >= 2`` is a
classification task with ``n`` classes, ``n == 1`` a regression task (a score). A student with
several heads is a multi-task (MKD) student: the layers below the heads are shared.

Every student's forward is ``forward(ids_a, ids_b=None, task=None) -> [B, n_outputs(task)]``;
padding id is 0. ``task=None`` is allowed when the student has exactly one head.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn


class TaskHeads(nn.ModuleDict):
    """One classifier per task: ``Dropout -> Linear`` or, with ``hidden``,
    ``Dropout -> Linear(in_dim, hidden) -> ReLU -> Dropout -> Linear(hidden, n)``.

    It is a ``ModuleDict`` (``heads["sst2"]``, ``"sst2" in heads``, ``heads.keys()``), with
    ``sizes`` (task -> number of outputs), :meth:`resolve` and ``forward(x, task)``.
    """

    def __init__(self, in_dim: int, heads: dict[str, int], hidden: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        if not heads:
            raise ValueError("a student needs at least one task head")
        self.sizes: dict[str, int] = {}
        for task, n in heads.items():
            task = str(task)
            if int(n) < 1:
                raise ValueError(f"head {task!r} has {n} outputs; need >= 1 (1 = regression)")
            if not task or "." in task or (hasattr(self, task) and task not in self._modules):
                raise ValueError(f"task name {task!r} cannot name a head: use a plain identifier "
                                 "such as 'sst2' (no dots, not a torch.nn.Module attribute)")
            if hidden:
                layer = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.ReLU(),
                                      nn.Dropout(dropout), nn.Linear(hidden, int(n)))
            else:
                layer = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, int(n)))
            self[task] = layer
            self.sizes[task] = int(n)

    def resolve(self, task: str | None) -> str:
        """The head for ``task``; ``None`` picks the only head. Unknown names raise ValueError."""
        if task is None:
            if len(self.sizes) == 1:
                return next(iter(self.sizes))
            raise ValueError(f"this student has heads {sorted(self.sizes)}: pass task=")
        if task not in self.sizes:
            raise ValueError(f"no head for task {task!r}; heads: {sorted(self.sizes)}")
        return task

    def is_regression(self, task: str | None = None) -> bool:
        return self.sizes[self.resolve(task)] == 1

    def forward(self, x: torch.Tensor, task: str | None = None) -> torch.Tensor:
        return self[self.resolve(task)](x)


class Student(nn.Module):
    """Base class: a student keeps its task heads in ``self.heads`` (a :class:`TaskHeads`)."""

    heads: TaskHeads

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter except the task heads' (MKD's shared layers)."""
        for name, p in self.named_parameters():
            if not name.startswith("heads."):
                yield p

    def head_parameters(self, task: str | None = None) -> Iterator[nn.Parameter]:
        """Parameters of one head, or of all heads when ``task`` is None."""
        if task is None:
            yield from self.heads.parameters()
        else:
            yield from self.heads[self.heads.resolve(task)].parameters()

    def non_embedding_parameters(self) -> int:
        """Number of parameters outside ``nn.Embedding`` tables (trainable or not)."""
        emb = {id(p) for m in self.modules() if isinstance(m, nn.Embedding)
               for p in m.parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in emb)


def lengths_of(ids: torch.Tensor) -> torch.Tensor:
    """Number of non-padding (non-zero) tokens per row."""
    return (ids != 0).sum(dim=1)
