"""The student kinds, each listed once: the value of ``student.arch``, what its input is, whether
it can start from a teacher's layers, and how it is built.

Code that must treat students differently asks the kind (``student_kind(arch).encoding``), never
compares ``arch`` with a name: a new student is one :func:`register` call in this package, and
config checks, bundles, preflight and run names follow.

- ``encoding``: ``"words"``: the student's own vocabulary built from the transfer set, with word
  vectors (``student.embeddings``) when given; ``"wordpiece"``: the teacher's tokenizer (pairs
  joined as the teacher joins them), no word vectors.
- ``from_teacher_layers``: ``student.init_from_teacher`` can copy teacher layers into it.
- ``build(cfg, vocab_size, heads, pair, pretrained, max_position)``: a fresh ``nn.Module``
  (:func:`students.factory.build_student` documents the arguments).
- ``shape(cfg)``: its size in a few characters, for run names (``h150``, ``L3 h384``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

ENCODINGS = ("words", "wordpiece")


@dataclass(frozen=True)
class StudentKind:
    name: str
    encoding: str
    from_teacher_layers: bool
    build: Callable
    shape: Callable
    summary: str

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"student kind {self.name!r}: encoding={self.encoding!r}, choose "
                             f"{', '.join(ENCODINGS)}")

    @property
    def words(self) -> bool:
        """Reads its own word vocabulary (and word vectors when given)."""
        return self.encoding == "words"


_KINDS: dict[str, StudentKind] = {}


def register(kind: StudentKind) -> StudentKind:
    """Add ``kind`` under its name; a second kind of the same name is an error."""
    if kind.name in _KINDS:
        raise ValueError(f"student kind {kind.name!r} is registered already")
    _KINDS[kind.name] = kind
    return kind


def names() -> tuple[str, ...]:
    """The registered ``student.arch`` values, in registration order."""
    _load()
    return tuple(_KINDS)


def student_kind(name: str) -> StudentKind:
    """The kind registered as ``name``; ValueError naming the choices otherwise."""
    _load()
    try:
        return _KINDS[name]
    except KeyError:
        raise ValueError(f"student.arch={name!r}: choose {', '.join(_KINDS)}") from None


def _load() -> None:
    # the built-in kinds register when students.factory is imported (it imports the models)
    import students.factory  # noqa: F401
