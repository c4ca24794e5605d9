"""The one record type every stage passes around: a text (or text pair) with an optional label."""
from __future__ import annotations

from dataclasses import dataclass


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
