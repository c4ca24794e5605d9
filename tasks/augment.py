"""Heuristic data augmentation of Tang et al. (2019), "Distilling task-specific knowledge from
BERT into simple neural networks", section 3.1. Pure functions: no Ray, no file I/O.

For every word of a sentence draw X ~ U[0, 1]:

* ``X < p_mask``                    -> **masking**: the word becomes the teacher's mask token;
* ``p_mask <= X < p_mask + p_pos``  -> **POS-guided replacement**: the word becomes another word
  with the same universal POS tag, drawn from the unigram distribution of the training words
  with that tag (renormalized without the word itself; a word that has no other candidate
  stays as it is);
* otherwise the word is kept.

The two word rules are mutually exclusive. Afterwards, with probability ``p_ng`` the sample is
replaced by a random **n-gram** of itself, ``n`` uniform in ``{1, ..., max_ngram}`` (clipped to
the sentence length), its start uniform over the possible positions.

This is repeated ``n_iter`` times per example (default 20 for single sentences, 10 for pairs);
samples that repeat an earlier sample of the same example, or that equal the original, are
dropped; the original is always kept (``aug_index`` 0, with its gold label).

Sentence pairs stay pairs. ``pair_mode="cycle"`` (the default, as the paper states it) cycles
the iterations through augmenting the first sentence only (second held fixed), the second only
(first held fixed), and both; ``pair_mode="both"`` augments both sentences every iteration. The
n-gram rule applies to each augmented sentence independently, with probability ``p_ng``.

Randomness: every example uses its own generator ``numpy.random.default_rng([seed, example.id])``
and nothing else, so the output does not depend on how examples are chunked or on how many
workers run them.

Words are the tokens of :func:`tasks.text.tokenize` (lower-cased, punctuation split, the mask
token kept whole); augmented texts are written with :func:`tasks.text.detokenize`. Tokens equal
to the mask token already present in the input are not words: they are neither tagged nor
counted nor changed.

POS tags come from NLTK's averaged perceptron tagger mapped to the universal tagset; the
lexicon is built from the tags of the whole training set (each word in its context).
"""
from __future__ import annotations

import os
from bisect import bisect_right
from collections import Counter
from dataclasses import asdict, dataclass, fields
from typing import Callable, Iterable, Sequence

import numpy as np

from tasks.data import Example
from tasks.text import DEFAULT_MASK, detokenize, tokenize

# Bump when the rules, their order of random draws, or the row format change: part of cache keys.
RULES_VERSION = 1

PAIR_MODES = ("cycle", "both")
NLTK_RESOURCES = {
    "taggers/averaged_perceptron_tagger_eng": "averaged_perceptron_tagger_eng",
    "taggers/universal_tagset": "universal_tagset",
}

Tags = list  # list[str | None]: one universal tag per token, None for mask tokens
Tagger = Callable[[list[str]], list[str]]  # words -> one universal tag per word


# ---------------------------------------------------------------------------------------------
# configuration checks


def n_iter_for(cfg, is_pair: bool) -> int:
    """Samples drawn per example: ``cfg.n_iter``, or 20 (single sentence) / 10 (pair)."""
    if cfg.n_iter is not None:
        return int(cfg.n_iter)
    return 10 if is_pair else 20


def validate_config(cfg, pair_mode: str = "cycle") -> None:
    """Raise ``ValueError`` naming the field when an :class:`AugmentConfig` value is unusable."""

    def bad(name: str, why: str) -> ValueError:
        return ValueError(f"augment.{name}={getattr(cfg, name)!r} {why}")

    for name in ("p_mask", "p_pos", "p_ng"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
            raise bad(name, "is outside [0, 1]")
    if cfg.p_mask + cfg.p_pos > 1.0 + 1e-12:
        raise ValueError(
            f"augment.p_mask + augment.p_pos = {cfg.p_mask + cfg.p_pos:g} exceeds 1 "
            f"(p_mask={cfg.p_mask}, p_pos={cfg.p_pos})"
        )
    for name, low in (("n_iter", 1), ("max_ngram", 1), ("max_words", 1), ("num_workers", 1),
                      ("chunk_size", 1), ("max_examples", 1), ("seed", 0)):
        v = getattr(cfg, name, None)
        if v is None and name in ("n_iter", "max_examples"):
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise bad(name, f"must be an integer >= {low}")
    if pair_mode not in PAIR_MODES:
        raise ValueError(f"pair_mode={pair_mode!r}: choose one of {', '.join(PAIR_MODES)}")


def check_examples(examples: Sequence[Example]) -> None:
    """Example ids must be unique non-negative integers (they seed each example's generator);
    labels numbers or None."""
    seen: set[int] = set()
    for ex in examples:
        if isinstance(ex.id, bool) or not isinstance(ex.id, (int, np.integer)) or ex.id < 0:
            raise ValueError(f"example id {ex.id!r} must be a non-negative integer")
        if ex.id in seen:
            raise ValueError(f"example id {ex.id} occurs more than once")
        seen.add(ex.id)
        if ex.label is not None and (isinstance(ex.label, bool)
                                     or not isinstance(ex.label, (int, float, np.number))):
            raise ValueError(f"example {ex.id}: label {ex.label!r} must be a number or None "
                             "(a class index or a regression score)")


def _tokenize_example(
    example: Example, max_words: int | None, mask_token: str
) -> tuple[str | None, list[list[str]]]:
    """(skip reason or None, token lists of text_a and, for pairs, text_b)."""
    texts = [example.text_a] + ([example.text_b] if example.text_b is not None else [])
    sents: list[list[str]] = []
    reason = None
    for t in texts:
        if not isinstance(t, str) or not t.strip():
            return "empty", []
        toks = tokenize(t, mask_token)
        if not toks:
            return "empty", []
        if max_words is not None and len(toks) > max_words:
            reason = "too_long"
        sents.append(toks)
    return reason, sents


def skip_reason(example: Example, max_words: int, mask_token: str = DEFAULT_MASK) -> str | None:
    """``"empty"`` (a text empty or whitespace only), ``"too_long"`` (a text of more than
    ``max_words`` tokens) or None. Skipped examples are left out of the transfer set."""
    return _tokenize_example(example, max_words, mask_token)[0]


# ---------------------------------------------------------------------------------------------
# NLTK data and tagging


class NltkDataMissingError(LookupError):
    """NLTK resources the augmentation needs are not on ``nltk.data.path``."""


def check_nltk_data(path: str | os.PathLike | Sequence[str | os.PathLike] | None = None) -> list[str]:
    """Put ``path`` (one folder or several) and ``$NLTK_DATA`` first on ``nltk.data.path``; fail
    early if a resource is missing.

    Returns the search path (pass it to worker processes). The error names every missing
    resource and the exact ``nltk.download(...)`` calls that install them.
    """
    import nltk

    extra: list[str] = []
    if isinstance(path, (str, os.PathLike)):
        extra.append(os.fspath(path))
    elif path is not None:
        extra += [os.fspath(p) for p in path]
    env = os.environ.get("NLTK_DATA")
    if env:
        extra += [p for p in env.split(os.pathsep) if p]
    for p in reversed(extra):
        if p not in nltk.data.path:
            nltk.data.path.insert(0, p)
    missing = []
    for res in NLTK_RESOURCES:
        try:
            nltk.data.find(res + "/")
        except LookupError:
            missing.append(res)
    if missing:
        calls = "; ".join(f"nltk.download('{NLTK_RESOURCES[r]}')" for r in missing)
        raise NltkDataMissingError(
            "augmentation needs NLTK data that was not found: " + ", ".join(missing) + ".\n"
            f"Install it with:  python -c \"import nltk; {calls}\"\n"
            "or point augment.nltk_data (or $NLTK_DATA) at a folder that holds it "
            "(e.g. ../shared/assets/nltk_data).\n"
            "Searched: " + ", ".join(str(p) for p in nltk.data.path)
        )
    return list(nltk.data.path)


_TAGGER_CACHE: dict[str, Tagger] = {}


def nltk_tagger(nltk_data: str | os.PathLike | Sequence[str | os.PathLike] | None = None) -> Tagger:
    """NLTK's averaged perceptron tagger, mapped to universal tags (loaded once per process)."""
    check_nltk_data(nltk_data)
    key = "eng"
    if key not in _TAGGER_CACHE:
        from nltk.tag.mapping import tagset_mapping
        from nltk.tag.perceptron import PerceptronTagger

        tagger = PerceptronTagger(lang="eng")
        mapping = dict(tagset_mapping("en-ptb", "universal"))

        def tag(words: list[str]) -> list[str]:
            if not words:
                return []
            return [mapping.get(t, "X") for _, t in tagger.tag(words)]

        _TAGGER_CACHE[key] = tag
    return _TAGGER_CACHE[key]


def tag_tokens(tokens: list[str], tagger: Tagger, mask_token: str = DEFAULT_MASK) -> Tags:
    """Universal tag per token; mask tokens are left out of tagging and get None."""
    words = [t for t in tokens if t != mask_token]
    tags = tagger(words)
    if len(tags) != len(words):
        raise ValueError(f"tagger returned {len(tags)} tags for {len(words)} words")
    it = iter(tags)
    return [None if t == mask_token else next(it) for t in tokens]


def tag_examples(
    examples: Iterable[Example],
    tagger: Tagger,
    mask_token: str = DEFAULT_MASK,
    max_words: int | None = None,
) -> list[tuple[Tags, Tags | None] | None]:
    """Tags of ``text_a`` and ``text_b`` (None for single sentences) per example.

    Examples that :func:`skip_reason` rejects get None (texts longer than ``max_words`` only
    when it is given).
    """
    out: list[tuple[Tags, Tags | None] | None] = []
    for ex in examples:
        reason, sents = _tokenize_example(ex, max_words, mask_token)
        if reason is not None:
            out.append(None)
            continue
        tagged = [tag_tokens(s, tagger, mask_token) for s in sents]
        out.append((tagged[0], tagged[1] if len(tagged) > 1 else None))
    return out


# ---------------------------------------------------------------------------------------------
# POS lexicon


def count_tagged(
    examples: Iterable[Example],
    tags: Iterable[tuple[Tags, Tags | None] | None],
    mask_token: str = DEFAULT_MASK,
) -> dict[str, Counter]:
    """tag -> Counter(word -> occurrences with that tag); mergeable across chunks."""
    counts: dict[str, Counter] = {}
    for ex, tt in zip(examples, tags):
        if tt is None:
            continue
        for text, tg in ((ex.text_a, tt[0]), (ex.text_b, tt[1])):
            if text is None or tg is None:
                continue
            for w, t in zip(tokenize(text, mask_token), tg):
                if t is not None:
                    counts.setdefault(t, Counter())[w] += 1
    return counts


def merge_counts(parts: Iterable[dict[str, Counter]]) -> dict[str, Counter]:
    total: dict[str, Counter] = {}
    for part in parts:
        for t, c in part.items():
            total.setdefault(t, Counter()).update(c)
    return total


class PosLexicon:
    """Per universal tag: the training words seen with it and how often (in context).

    ``sample_other(word, tag, u)`` draws from ``count(w, tag)`` renormalized over the tag's words
    other than ``word`` (inverse CDF at ``u`` in [0, 1)). ``tag_of(word)`` is the word's most
    frequent tag (ties: alphabetical).
    """

    def __init__(self, counts: dict[str, dict[str, int]]):
        self._words: dict[str, tuple[str, ...]] = {}
        self._cum: dict[str, list[int]] = {}
        self._index: dict[str, dict[str, int]] = {}
        best: dict[str, tuple[int, str]] = {}
        for tag in sorted(counts):
            items = sorted((w, int(c)) for w, c in counts[tag].items() if c > 0)
            if not items:
                continue
            words = tuple(w for w, _ in items)
            self._words[tag] = words
            self._cum[tag] = np.cumsum([c for _, c in items]).tolist()
            self._index[tag] = {w: i for i, w in enumerate(words)}
            for w, c in items:
                prev = best.get(w)
                if prev is None or c > prev[0]:  # tags visited alphabetically: ties keep the first
                    best[w] = (c, tag)
        self._tag_of = {w: t for w, (_, t) in best.items()}

    # -- queries
    @property
    def tags(self) -> list[str]:
        return list(self._words)

    def words(self, tag: str) -> tuple[str, ...]:
        return self._words.get(tag, ())

    def count(self, word: str, tag: str) -> int:
        i = self._index.get(tag, {}).get(word)
        if i is None:
            return 0
        cum = self._cum[tag]
        return cum[i] - (cum[i - 1] if i else 0)

    def total(self, tag: str) -> int:
        cum = self._cum.get(tag)
        return cum[-1] if cum else 0

    def tag_of(self, word: str) -> str | None:
        return self._tag_of.get(word)

    def tags_of(self, word: str) -> dict[str, int]:
        return {t: self.count(word, t) for t in self._words if self.count(word, t)}

    def __len__(self) -> int:
        return len(self._tag_of)

    def counts(self) -> dict[str, dict[str, int]]:
        return {t: {w: self.count(w, t) for w in ws} for t, ws in self._words.items()}

    # -- sampling
    def slot(self, word: str, tag: str | None) -> tuple | None:
        """Precomputed sampling state for ``word`` with ``tag`` (None for non-words)."""
        if tag is None:
            return None
        cum = self._cum.get(tag)
        if cum is None:
            return (0, 0, 0, (), ())
        i = self._index[tag].get(word)
        lo = (cum[i - 1] if i else 0) if i is not None else 0
        c = (cum[i] - lo) if i is not None else 0
        return (cum[-1] - c, lo, c, cum, self._words[tag])

    @staticmethod
    def draw(slot: tuple, u: float) -> str | None:
        avail, lo, c, cum, words = slot
        if avail <= 0:
            return None
        r = min(int(u * avail), avail - 1)
        if r >= lo:
            r += c
        return words[bisect_right(cum, r)]

    def sample_other(self, word: str, tag: str, u: float) -> str | None:
        """Another word of ``tag`` by unigram frequency, or None when there is no other."""
        return self.draw(self.slot(word, tag), u)


def build_pos_lexicon(
    examples: Sequence[Example],
    tagger: Tagger | None = None,
    *,
    tags: Sequence[tuple[Tags, Tags | None] | None] | None = None,
    mask_token: str = DEFAULT_MASK,
    max_words: int | None = None,
) -> PosLexicon:
    """Lexicon of the training set: tag ``examples`` with ``tagger`` (or use given ``tags``)."""
    if tags is None:
        if tagger is None:
            raise ValueError("build_pos_lexicon needs a tagger or precomputed tags")
        tags = tag_examples(examples, tagger, mask_token, max_words)
    return PosLexicon(count_tagged(examples, tags, mask_token))


# ---------------------------------------------------------------------------------------------
# the rules


@dataclass
class AugmentStats:
    """How often each rule fired. Word counts are over every drawn sample, before dedup."""

    examples: int = 0  # examples augmented (not skipped)
    skipped_empty: int = 0
    skipped_too_long: int = 0
    words: int = 0  # words the word rules looked at
    masked_words: int = 0
    swap_draws: int = 0  # times the POS rule was drawn
    swapped_words: int = 0  # words actually replaced (no other candidate -> kept)
    samples: int = 0  # synthetic samples drawn (n_iter per example)
    ngram_samples: int = 0  # samples where at least one sentence became an n-gram
    ngram_sentences: int = 0
    copies_dropped: int = 0  # equal to the original
    duplicates_dropped: int = 0  # equal to an earlier sample of the same example
    rows: int = 0  # rows produced, originals included
    augmented_rows: int = 0

    def merge(self, other: "AugmentStats") -> "AugmentStats":
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    @property
    def skipped(self) -> int:
        return self.skipped_empty + self.skipped_too_long

    def to_dict(self) -> dict[str, float]:
        d: dict[str, float] = asdict(self)
        d["skipped"] = self.skipped
        d["mask_share"] = self.masked_words / self.words if self.words else 0.0
        d["swap_share"] = self.swapped_words / self.words if self.words else 0.0
        d["swap_draw_share"] = self.swap_draws / self.words if self.words else 0.0
        d["ngram_share"] = self.ngram_samples / self.samples if self.samples else 0.0
        return d


@dataclass(frozen=True)
class AugmentedRow:
    example_id: int
    aug_index: int  # 0: the original (gold label); 1..k: deduplicated samples (no label)
    text_a: str
    text_b: str | None = None
    label: float | None = None


@dataclass
class _Counts:
    words: int = 0
    masked: int = 0
    draws: int = 0
    swapped: int = 0


def _apply_word_rules(tokens, slots, x, u, p_mask, p_pos, mask_token, counts: _Counts) -> list[str]:
    out = list(tokens)
    threshold = p_mask + p_pos
    for i in np.flatnonzero(x < threshold).tolist():
        slot = slots[i]
        if slot is None:
            continue
        if x[i] < p_mask:
            out[i] = mask_token
            counts.masked += 1
        else:
            counts.draws += 1
            w = PosLexicon.draw(slot, float(u[i]))
            if w is not None:
                out[i] = w
                counts.swapped += 1
    return out


def _augment_sentence(tokens, slots, n_words, rng, cfg, mask_token, counts: _Counts):
    """Word rules, then the n-gram rule. Returns (tokens, became_ngram)."""
    n = len(tokens)
    x = rng.random(n)
    u = rng.random(n)
    counts.words += n_words
    out = _apply_word_rules(tokens, slots, x, u, cfg.p_mask, cfg.p_pos, mask_token, counts)
    if rng.random() < cfg.p_ng:
        size = min(int(rng.integers(1, cfg.max_ngram + 1)), n)
        start = int(rng.integers(0, n - size + 1))
        return out[start:start + size], True
    return out, False


def apply_rules(
    tokens: list[str],
    tags: Tags,
    lexicon: PosLexicon,
    rng: np.random.Generator,
    p_mask: float,
    p_pos: float,
    mask_token: str = DEFAULT_MASK,
) -> tuple[list[str], dict[str, int]]:
    """One pass of the two word rules over ``tokens`` (no n-gram); returns tokens and counts."""
    if len(tags) != len(tokens):
        raise ValueError(f"{len(tags)} tags for {len(tokens)} tokens")
    slots = [lexicon.slot(w, t) for w, t in zip(tokens, tags)]
    counts = _Counts(words=sum(s is not None for s in slots))
    x = rng.random(len(tokens))
    u = rng.random(len(tokens))
    out = _apply_word_rules(tokens, slots, x, u, p_mask, p_pos, mask_token, counts)
    return out, {"words": counts.words, "masked": counts.masked, "swap_draws": counts.draws,
                 "swapped": counts.swapped}


def _label(v) -> float | None:
    if v is None:
        return None
    f = float(v)
    return None if f != f else f


def augment_example(
    example: Example,
    lexicon: PosLexicon,
    cfg,
    tags_a: Tags,
    tags_b: Tags | None = None,
    *,
    mask_token: str = DEFAULT_MASK,
    pair_mode: str = "cycle",
    stats: AugmentStats | None = None,
) -> list[AugmentedRow]:
    """The original plus its deduplicated synthetic samples (see the module docstring).

    ``tags_a``/``tags_b`` are the tags of ``tokenize(text, mask_token)`` (see :func:`tag_tokens`).
    Skipped examples (empty, or more than ``cfg.max_words`` tokens) give ``[]`` and are counted
    in ``stats``. ``cfg`` is an :class:`orchestrator.config.AugmentConfig` (only its fields are
    read); it is not validated here: see :func:`validate_config`.
    """
    stats = stats if stats is not None else AugmentStats()
    reason, sents = _tokenize_example(example, cfg.max_words, mask_token)
    if reason == "empty":
        stats.skipped_empty += 1
        return []
    if reason == "too_long":
        stats.skipped_too_long += 1
        return []
    stats.examples += 1
    rows = [AugmentedRow(int(example.id), 0, example.text_a, example.text_b, _label(example.label))]

    is_pair = example.text_b is not None
    tag_lists = [tags_a]
    if is_pair:
        if tags_b is None:
            raise ValueError(f"example {example.id} is a pair: tags_b is required")
        tag_lists.append(tags_b)
    for s, t in zip(sents, tag_lists):
        if len(s) != len(t):
            raise ValueError(f"example {example.id}: {len(t)} tags for {len(s)} tokens")
    slots = [[lexicon.slot(w, t) for w, t in zip(s, tg)] for s, tg in zip(sents, tag_lists)]
    n_words = [sum(x is not None for x in sl) for sl in slots]

    rng = np.random.default_rng([int(cfg.seed), int(example.id)])
    counts = _Counts()
    original = tuple(tuple(s) for s in sents)
    seen = {original}
    n_iter = n_iter_for(cfg, is_pair)
    for it in range(n_iter):
        if is_pair and pair_mode == "cycle":
            which = ((0,), (1,), (0, 1))[it % 3]
        else:
            which = tuple(range(len(sents)))
        sample = list(sents)
        grams = 0
        for k in which:
            sample[k], g = _augment_sentence(sents[k], slots[k], n_words[k], rng, cfg, mask_token,
                                             counts)
            grams += g
        stats.samples += 1
        stats.ngram_sentences += grams
        stats.ngram_samples += grams > 0
        key = tuple(tuple(s) for s in sample)
        if key == original:
            stats.copies_dropped += 1
            continue
        if key in seen:
            stats.duplicates_dropped += 1
            continue
        seen.add(key)
        rows.append(AugmentedRow(int(example.id), len(rows), detokenize(sample[0]),
                                 detokenize(sample[1]) if is_pair else None, None))
    stats.words += counts.words
    stats.masked_words += counts.masked
    stats.swap_draws += counts.draws
    stats.swapped_words += counts.swapped
    stats.rows += len(rows)
    stats.augmented_rows += len(rows) - 1
    return rows


def augment_examples(
    examples: Sequence[Example],
    lexicon: PosLexicon,
    cfg,
    tags: Sequence[tuple[Tags, Tags | None] | None],
    *,
    mask_token: str = DEFAULT_MASK,
    pair_mode: str = "cycle",
) -> tuple[list[AugmentedRow], AugmentStats]:
    """:func:`augment_example` over ``examples`` (``tags`` from :func:`tag_examples`)."""
    stats = AugmentStats()
    rows: list[AugmentedRow] = []
    for ex, tt in zip(examples, tags):
        ta, tb = tt if tt is not None else ([], None)
        rows += augment_example(ex, lexicon, cfg, ta, tb, mask_token=mask_token,
                                pair_mode=pair_mode, stats=stats)
    return rows, stats


def augment_disabled(
    examples: Sequence[Example],
    cfg=None,
    mask_token: str = DEFAULT_MASK,
) -> tuple[list[AugmentedRow], AugmentStats]:
    """Augmentation switched off: the originals only, with the same skip rules and row format."""
    max_words = cfg.max_words if cfg is not None else 256
    stats = AugmentStats()
    rows: list[AugmentedRow] = []
    for ex in examples:
        reason = skip_reason(ex, max_words, mask_token)
        if reason == "empty":
            stats.skipped_empty += 1
        elif reason == "too_long":
            stats.skipped_too_long += 1
        else:
            stats.examples += 1
            rows.append(AugmentedRow(int(ex.id), 0, ex.text_a, ex.text_b, _label(ex.label)))
    stats.rows = len(rows)
    return rows, stats
