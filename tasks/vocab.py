"""Word vocabulary for the word-level students (BiLSTM, BCN).

Built from training texts with :func:`tasks.text.tokenize`; ids 0, 1, 2 are ``<pad>``, ``<unk>``
and ``<mask>``. The teacher's mask token (``[MASK]``), as written by augmentation, maps to
``<mask>``. Saved as JSON, never pickled.
"""
from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from pathlib import Path
from typing import Iterable

from tasks.data import DataError, Example
from tasks.text import DEFAULT_MASK, tokenize

PAD, UNK, MASK = "<pad>", "<unk>", "<mask>"
SPECIALS = (PAD, UNK, MASK)
FORMAT = "distillray-vocab"
FORMAT_VERSION = 1


class Vocab:
    """Word <-> id. ``words[i]`` is the word of id ``i``; specials come first."""

    def __init__(self, words: Iterable[str], mask_token: str = DEFAULT_MASK) -> None:
        itos = tuple(words)
        if itos[: len(SPECIALS)] != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}, got {itos[:3]}")
        stoi = {w: i for i, w in enumerate(itos)}
        if len(stoi) != len(itos):
            dup = next(w for w, c in Counter(itos).items() if c > 1)
            raise ValueError(f"word {dup!r} appears more than once in the vocabulary")
        self.words = itos
        self.mask_token = mask_token
        self._stoi = stoi

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, texts: Iterable[str], min_freq: int = 1, max_size: int | None = None,
              mask_token: str = DEFAULT_MASK) -> Vocab:
        """Words seen at least ``min_freq`` times, most frequent first (ties alphabetical).

        ``max_size`` caps the regular words (the three specials are not counted).
        """
        if min_freq < 1:
            raise ValueError(f"min_freq must be >= 1, got {min_freq}")
        if max_size is not None and max_size < 0:
            raise ValueError(f"max_size must be >= 0, got {max_size}")
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(t for t in tokenize(text, mask_token) if t != mask_token)
        for special in SPECIALS:
            counts.pop(special, None)
        ranked = sorted((w for w, c in counts.items() if c >= min_freq),
                        key=lambda w: (-counts[w], w))
        if max_size is not None:
            ranked = ranked[:max_size]
        return cls((*SPECIALS, *ranked), mask_token=mask_token)

    # ------------------------------------------------------------------ lookup

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self._stoi

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Vocab) and self.words == other.words
                and self.mask_token == other.mask_token)

    def __repr__(self) -> str:
        return f"Vocab({len(self)} words)"

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return 1

    @property
    def mask_id(self) -> int:
        return 2

    def index(self, token: str) -> int:
        """Id of one token: the mask token -> ``<mask>``, unknown -> ``<unk>``."""
        if token == self.mask_token:
            return self.mask_id
        return self._stoi.get(token, self.unk_id)

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """Token ids of ``text``, truncated to ``max_length`` (no padding)."""
        if max_length is not None and max_length < 0:
            raise ValueError(f"max_length must be >= 0, got {max_length}")
        tokens = tokenize(text, self.mask_token)
        if max_length is not None:
            tokens = tokens[:max_length]
        return [self.index(t) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.words[i] for i in ids]

    # ------------------------------------------------------------------ files

    def to_dict(self) -> dict[str, object]:
        return {"format": FORMAT, "version": FORMAT_VERSION, "mask_token": self.mask_token,
                "words": list(self.words)}

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON atomically (temp file, then rename)."""
        final = Path(path)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            tmp.write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocab:
        p = Path(path)
        if not p.is_file():
            raise DataError(f"vocabulary file {p} does not exist")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{p}: not a vocabulary JSON file ({e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DataError(f"{p}: not a distillray vocabulary (missing format={FORMAT!r})")
        if data.get("version") != FORMAT_VERSION:
            raise DataError(f"{p}: vocabulary version {data.get('version')!r}; this code "
                            f"reads version {FORMAT_VERSION}")
        try:
            return cls(data["words"], mask_token=data.get("mask_token", DEFAULT_MASK))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{p}: broken vocabulary: {e}") from None


def example_texts(examples: Iterable[Example]) -> Iterable[str]:
    """Every text of the examples (both sides of pairs), for :meth:`Vocab.build`."""
    for ex in examples:
        yield ex.text_a
        if ex.text_b is not None:
            yield ex.text_b
