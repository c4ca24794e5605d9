"""The record types every stage passes around: a text (or text pair) with an optional label, and
a task's examples."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

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


def utf8_error(path: str | Path, open_binary: Callable[[Path], IO[bytes]] | None = None) -> str:
    """Where ``path`` first stops being UTF-8, as ``"<path>, line L, column C: not valid UTF-8
    (...)"``. A text reader's UnicodeDecodeError counts bytes from the start of the chunk it
    was decoding, not of the file or a line; this reads the file again, line by line (UTF-8
    never puts a newline byte inside a character), to name the line and its column."""
    p = Path(path)
    with (open_binary or (lambda q: open(q, "rb")))(p) as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                column = len(raw[:e.start].decode("utf-8")) + 1
                return (f"{p}, line {line_no}, column {column}: not valid UTF-8 ({e.reason}, "
                        f"byte 0x{raw[e.start]:02x}); re-save the file as UTF-8")
    return f"{p}: not valid UTF-8; re-save the file as UTF-8"  # the text reader saw otherwise


@dataclass
class TaskData:
    """A task's training examples and its dev splits (split name -> examples)."""

    task: TaskSpec
    train: list[Example]
    dev: dict[str, list[Example]] = field(default_factory=dict)
    source: str = ""  # where the data came from: glue_dir | hub | custom | generated
