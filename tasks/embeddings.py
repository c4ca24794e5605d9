"""Pre-trained word vectors for a :class:`~tasks.vocab.Vocab`, from GloVe or word2vec text files.

GloVe text has no header (``word v1 ... vd`` per line); word2vec text starts with a
``count dim`` line. The file is streamed and only the vocabulary's rows are parsed, so large files
are fine (``.gz`` too). A vocabulary word without an exact match takes the vector of its first
case-insensitive match (for cased files such as word2vec's); words without any get small random
vectors from a fixed seed, ``<pad>`` gets zeros. A value that is not a finite number float32 can
hold (``nan``, ``inf``, ``1e40``) is refused with its line and column; :func:`check_vector_file`
checks every line before any work.

:func:`subword_mean_vectors` builds the vectors from a sub-word embedding table instead (a
teacher's input embeddings, ``student.embeddings=teacher``): each word gets the mean of its
pieces' rows.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from tasks.data import DataError, utf8_error
from tasks.vocab import SPECIALS, Vocab

F32_MAX = float(np.finfo(np.float32).max)  # a larger value would load as inf


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, space-separated fields) of each non-blank line."""
    try:
        with _open_text(path) as f:
            for line_no, line in enumerate(f, start=1):
                stripped = line.rstrip()
                if stripped:
                    yield line_no, stripped.split(" ")
    except UnicodeDecodeError:
        raise DataError(f"{utf8_error(path, _open_binary)} (word vector files are UTF-8 "
                        "text)") from None


def _vector(path: Path, line_no: int, fields: list[str], n_word: int) -> np.ndarray:
    """The values of one line as float32. A value that is not a number, not finite (nan, inf)
    or beyond float32 (it would load as inf) is refused, naming its line and column: a
    non-finite row would make every embedding that looks it up non-finite."""
    try:
        values = np.asarray(fields[n_word:], dtype=np.float64)
        if np.isfinite(values).all() and (np.abs(values) <= F32_MAX).all():
            return values.astype(np.float32)
    except ValueError:
        pass
    word = " ".join(fields[:n_word])
    for k, text in enumerate(fields[n_word:]):
        try:
            value = float(text)
            problem = ("not a finite number" if not np.isfinite(value) else
                       f"beyond float32's range (+-{F32_MAX:.1e})" if abs(value) > F32_MAX else "")
        except ValueError:
            problem = "not a number"
        if problem:
            column = sum(len(f) + 1 for f in fields[:n_word + k]) + 1
            raise DataError(f"{path}, line {line_no}, column {column}: value {k + 1} of {word!r} "
                            f"({text}) is {problem}; fix or delete that line")
    raise DataError(f"{path}, line {line_no}: the values of {word!r} are not numbers; fix or "
                    "delete that line")


def _check_vectors(path: Path, rows: list[tuple[int, list[str], int]]) -> None:
    """:func:`_vector` on many lines at once: one numpy parse, line by line only on a failure."""
    if not rows:
        return
    try:
        values = np.asarray([v for _, fields, n_word in rows for v in fields[n_word:]],
                            dtype=np.float64)
        if np.isfinite(values).all() and (np.abs(values) <= F32_MAX).all():
            return
    except ValueError:
        pass
    for line_no, fields, n_word in rows:
        _vector(path, line_no, fields, n_word)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _word2vec_header(fields: list[str]) -> tuple[int, int] | None:
    if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
        return int(fields[0]), int(fields[1])
    return None


def _dim_of(fields: list[str]) -> int:
    """Vector size given a file's first line: a word2vec header's, else the values after the word."""
    header = _word2vec_header(fields)
    return header[1] if header else len(fields) - 1


def vector_dim(path: str | os.PathLike) -> int:
    """The vector size of a GloVe or word2vec text file (``.gz`` too), from its first line."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"word vector file {p} does not exist")
    for _, fields in _lines(p):
        return _dim_of(fields)
    raise DataError(f"{p}: the file is empty; expected word vectors")


def load_word_vectors(path: str | os.PathLike, vocab: Vocab, expected_dim: int | None = None,
                      seed: int = 0, oov_std: float = 0.1) -> tuple[np.ndarray, int]:
    """(float32 matrix [len(vocab), dim], number of vocabulary words found in the file)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"word vector file {p} does not exist; give a GloVe or word2vec text "
                        "file (student.embeddings), or none for random initialisation")
    special_ids = {vocab.index(s) for s in SPECIALS}
    found: dict[int, np.ndarray] = {}
    exact: set[int] = set()
    dim: int | None = None
    for line_no, fields in _lines(p):
        if dim is None:
            header = _word2vec_header(fields)
            dim = _dim_of(fields)
            if dim < 1:
                raise DataError(f"{p}, line {line_no}: no vector values; expected "
                                "'word v1 ... vd' (GloVe) or a 'count dim' header (word2vec)")
            if expected_dim is not None and dim != expected_dim:
                raise DataError(f"{p}, line {line_no}: vectors have {dim} dimensions, expected "
                                f"{expected_dim}; use a file of that size or change the "
                                "configured dimension")
            if header:
                continue
        n_word = len(fields) - dim
        if n_word < 1 or (n_word > 1 and _is_number(fields[1])):
            raise DataError(f"{p}, line {line_no}: {len(fields) - 1} values after the word, "
                            f"expected {dim}; the file is cut or malformed")
        if n_word > 1:
            continue  # a word containing spaces (GloVe 840B has some): never a token
        word = fields[0]
        idx = vocab.index(word)
        is_exact = word in vocab
        if not is_exact:
            idx = vocab.index(word.lower())
        if idx in special_ids or idx in exact or (idx in found and not is_exact):
            continue
        found[idx] = _vector(p, line_no, fields, 1)
        if is_exact:
            exact.add(idx)
    if dim is None:
        raise DataError(f"{p}: the file is empty; expected word vectors")
    rng = np.random.default_rng(seed)
    matrix = rng.normal(0.0, oov_std, size=(len(vocab), dim)).astype(np.float32)
    matrix[vocab.pad_id] = 0.0
    for idx, vec in found.items():
        matrix[idx] = vec
    return matrix, len(found)


def check_vector_file(path: str | os.PathLike, block: int = 4096) -> int:
    """Check a whole word vector file before any work; returns its vector size.

    The first line gives the size (a word2vec ``count dim`` header, else the values after the
    word); every line must have that many values after the word, each a finite number float32
    can hold. The file is streamed whatever its size and its values parsed ``block`` lines at a
    time (a second or two per 16 MB), so a bad line anywhere fails here, not after a teacher
    trained and labeled.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"word vector file {p} does not exist; give a GloVe or word2vec text "
                        "file (student.embeddings=PATH), or student.embeddings=null for random "
                        "initialisation")
    dim: int | None = None
    rows: list[tuple[int, list[str], int]] = []
    for line_no, fields in _lines(p):
        if dim is None:
            dim = _dim_of(fields)
            if dim < 1:
                raise DataError(f"{p}, line {line_no}: no vector values; expected 'word v1 ... "
                                "vd' (GloVe) or a 'count dim' header (word2vec)")
            if _word2vec_header(fields):
                continue
        n_word = len(fields) - dim
        if n_word < 1 or (n_word > 1 and _is_number(fields[1])):
            _check_vectors(p, rows)  # an earlier bad value is named first
            raise DataError(f"{p}, line {line_no}: {len(fields) - 1} values after the word, "
                            f"expected {dim} (the size line 1 gives); the file is cut or "
                            "malformed: fix or delete that line")
        rows.append((line_no, fields, n_word))
        if len(rows) >= block:
            _check_vectors(p, rows)
            rows = []
    _check_vectors(p, rows)
    if dim is None:
        raise DataError(f"{p}: the file is empty; expected word vectors")
    return dim


def subword_mean_vectors(vocab: Vocab, piece_ids: list[list[int]], table: np.ndarray,
                         unk_id: int | None, mask_id: int | None = None, seed: int = 0,
                         oov_std: float = 0.1) -> tuple[np.ndarray, int]:
    """Word vectors from a sub-word (word-piece) embedding ``table`` [pieces, dim]:
    ``piece_ids[i]`` are the pieces of ``vocab.words[i]`` (no special tokens), and word ``i``
    gets the mean of their rows. A word without pieces, or whose pieces are all ``unk_id``, gets
    the ``unk_id`` row, as the teacher sees it. The specials: ``<pad>`` zeros, ``<unk>`` the
    ``unk_id`` row, ``<mask>`` the ``mask_id`` row (the teacher's mask token, which the
    augmentation writes), else the ``<unk>`` one. A table without an ``unk_id`` gives one small
    random vector (fixed seed) in place of that row. Returns (float32 matrix [len(vocab), dim],
    number of regular words with at least one piece other than ``unk_id``)."""
    table = np.asarray(table, dtype=np.float32)
    if table.ndim != 2:
        raise ValueError(f"the sub-word table must be 2-d [pieces, dim], got shape {table.shape}")
    if len(piece_ids) != len(vocab):
        raise ValueError(f"{len(piece_ids)} piece lists for a vocabulary of {len(vocab)} words")
    rng = np.random.default_rng(seed)
    unk = table[unk_id] if unk_id is not None else rng.normal(0.0, oov_std, table.shape[1])
    matrix = np.empty((len(vocab), table.shape[1]), dtype=np.float32)
    special_ids = {vocab.index(s) for s in SPECIALS}
    found = 0
    for i, ids in enumerate(piece_ids):
        if i in special_ids:
            continue
        if ids and any(j != unk_id for j in ids):
            matrix[i] = table[list(ids)].mean(axis=0)
            found += 1
        else:
            matrix[i] = unk
    matrix[vocab.pad_id] = 0.0
    matrix[vocab.unk_id] = unk
    matrix[vocab.mask_id] = table[mask_id] if mask_id is not None else unk
    return matrix, found
