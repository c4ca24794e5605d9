"""The record types every stage passes around: a text (or text pair) with an optional label, and
a task's examples."""
from __future__ import annotations

from dataclasses import dataclass, field

from tasks.registry import TaskSpec


@dataclass(frozen=True)
class Example:
    """One example. ``id`` is stable within its split (row order of the source file)."""

    id: int
    text_a: str
    text_b: str | None = None
    label: int | float | None = None  # class index, regression score, or None when unlabeled

    @property
    def is_pair(self) -> bool:
        return self.text_b is not None


class DataError(ValueError):
    """Bad input data: names the file (and line) and says what to do."""


@dataclass
class TaskData:
    """A task's training examples and its dev splits (split name -> examples)."""

    task: TaskSpec
    train: list[Example]
    dev: dict[str, list[Example]] = field(default_factory=dict)
    source: str = ""  # where the data came from: glue_dir | hub | custom | generated
