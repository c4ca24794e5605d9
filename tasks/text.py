"""Word tokenization shared by the student vocabulary and the augmentation rules.

One function so that what augmentation writes and what the student reads agree: lower-cased,
punctuation split off, contractions kept as the Penn-Treebank pieces (``do n't``), and the
teacher's mask token (``[MASK]`` by default) kept whole.
"""
from __future__ import annotations

import re

DEFAULT_MASK = "[MASK]"
_WORD = re.compile(r"n't|\w+(?:[-.]\w+)*|'\w*|[^\w\s]", re.UNICODE)


def tokenize(text: str, mask_token: str = DEFAULT_MASK) -> list[str]:
    """Split ``text`` into lower-cased word tokens; ``mask_token`` survives intact."""
    out: list[str] = []
    for chunk in text.split():
        if chunk == mask_token:
            out.append(mask_token)
            continue
        if mask_token in chunk:
            pieces = chunk.split(mask_token)
            for i, piece in enumerate(pieces):
                if piece:
                    out.extend(_split_word(piece))
                if i < len(pieces) - 1:
                    out.append(mask_token)
            continue
        out.extend(_split_word(chunk))
    return out


def _split_word(chunk: str) -> list[str]:
    low = chunk.lower()
    # "don't" -> "do", "n't" (Treebank style, as SST-2 is already written)
    if low.endswith("n't") and len(low) > 3:
        return _WORD.findall(low[:-3]) + ["n't"]
    return _WORD.findall(low)


def detokenize(tokens: list[str]) -> str:
    """Join tokens with single spaces (the form augmentation writes)."""
    return " ".join(tokens)
