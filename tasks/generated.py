"""Tiny synthetic, learnable data for tests and the smoke preset (``data.source=generated``).

- single text, classification: filler words plus cue words of the label's class
  (class 0 negative words, class 1 positive words, further classes their own words);
- single text, regression: score 0..5 = 5 x the share of positive among the cue words;
- pairs: the second text shares a fraction of the first's words. Classes ordered from most to
  least related (``entailment``/``equivalent``/``1`` first; ``not_*``/``contradiction`` last)
  get overlaps spread from 1 to 0; regression scores are 5 x the overlap.

Deterministic: the same (task, sizes, seed) always gives the same examples.
"""
from __future__ import annotations

import random

from tasks.data import Example, TaskData
from tasks.registry import TaskSpec

FILLER = ("the", "movie", "film", "story", "was", "is", "a", "really", "quite", "this", "it",
          "and", "with", "of", "plot", "acting", "overall", "scenes", "characters", "so")
CUE_GROUPS: tuple[tuple[str, ...], ...] = (
    ("bad", "awful", "boring", "dull", "terrible", "weak", "tedious", "poor", "bland", "messy"),
    ("good", "great", "wonderful", "charming", "brilliant", "fun", "moving", "superb", "clever",
     "lovely"),
    ("strange", "odd", "weird", "curious", "bizarre", "unusual", "peculiar", "quirky"),
    ("long", "slow", "lengthy", "endless", "sprawling", "epic", "extended", "drawn"),
)
CONTENT = ("dog", "cat", "river", "city", "doctor", "teacher", "car", "train", "garden", "house",
           "music", "song", "market", "price", "game", "team", "bridge", "storm", "school",
           "child", "book", "letter", "phone", "computer", "island", "ship", "forest", "road",
           "bank", "coffee", "winter", "summer", "mountain", "village", "painter", "kitchen",
           "window", "horse", "station", "museum", "runs", "builds", "opens", "reads", "paints",
           "sells", "visits", "finds", "carries", "watches")
NEGATIVE_NAME_PREFIXES = ("not", "un", "non")
NEGATIVE_NAMES = ("contradiction", "negative")


def generate_task_data(task: TaskSpec, n_train: int, n_dev: int, seed: int) -> TaskData:
    """Train and dev examples (each of ``task.dev_splits`` gets ``n_dev``)."""
    if n_train < 0 or n_dev < 0:
        raise ValueError(f"sizes must be >= 0, got n_train={n_train}, n_dev={n_dev}")
    train = generate_examples(task, n_train, _rng(task, "train", seed))
    dev = {s: generate_examples(task, n_dev, _rng(task, s, seed)) for s in task.dev_splits}
    return TaskData(task=task, train=train, dev=dev, source="generated")


def _rng(task: TaskSpec, split: str, seed: int) -> random.Random:
    return random.Random(f"distillray-generated:{task.name}:{split}:{seed}")  # str seeds are stable


def generate_examples(task: TaskSpec, n: int, rng: random.Random) -> list[Example]:
    """``n`` examples of the task's shape, drawn from ``rng``."""
    make = _pair_example if task.is_pair else _single_example
    return [make(task, i, rng) for i in range(n)]


def cue_words(label: int) -> tuple[str, ...]:
    """The words that signal class ``label`` in single-text data."""
    if label < len(CUE_GROUPS):
        return CUE_GROUPS[label]
    return tuple(f"cue{label}x{j}" for j in range(8))


def _single_example(task: TaskSpec, i: int, rng: random.Random) -> Example:
    words = [rng.choice(FILLER) for _ in range(rng.randint(4, 8))]
    if task.label_names is None:
        n_cues = 5
        n_pos = rng.randint(0, n_cues)
        cues = [rng.choice(CUE_GROUPS[1]) for _ in range(n_pos)]
        cues += [rng.choice(CUE_GROUPS[0]) for _ in range(n_cues - n_pos)]
        label: int | float = _in_range(task, 5.0 * n_pos / n_cues)
    else:
        label = rng.randrange(len(task.label_names))
        cues = [rng.choice(cue_words(label)) for _ in range(rng.randint(1, 2))]
    for w in cues:
        words.insert(rng.randint(0, len(words)), w)
    return Example(id=i, text_a=" ".join(words), label=label)


def _pair_example(task: TaskSpec, i: int, rng: random.Random) -> Example:
    first = rng.sample(CONTENT, rng.randint(5, 8))
    if task.label_names is None:
        overlap = rng.randint(0, 5) / 5
        label: int | float | None = None
    else:
        label = rng.randrange(len(task.label_names))
        overlap = overlap_for_class(task.label_names, label)
    kept = rng.sample(first, round(overlap * len(first)))
    fresh = rng.sample([w for w in CONTENT if w not in first], len(first) - len(kept))
    second = kept + fresh
    rng.shuffle(second)
    if label is None:
        label = _in_range(task, round(5.0 * len(kept) / len(second), 3))
    return Example(id=i, text_a=" ".join(first), text_b=" ".join(second), label=label)


def _in_range(task: TaskSpec, score: float) -> float:
    if task.score_range is None:
        return score
    lo, hi = task.score_range
    return lo + (hi - lo) * score / 5.0


def _is_negative_name(name: str) -> bool:
    low = name.lower()
    return low.startswith(NEGATIVE_NAME_PREFIXES) or low in NEGATIVE_NAMES


def relatedness_order(label_names: tuple[str, ...]) -> list[int]:
    """Class indices from most to least related (see the module docstring)."""
    order = list(range(len(label_names)))
    if not any(_is_negative_name(n) for n in label_names):
        return order[::-1] if len(order) == 2 else order  # numeric binary: 1 = related
    return sorted(order, key=lambda c: (_is_negative_name(label_names[c]), c))


def overlap_for_class(label_names: tuple[str, ...], label: int) -> float:
    """Share of the first text's words that the second text keeps for class ``label``."""
    rank = relatedness_order(label_names).index(label)
    return 1.0 - rank / (len(label_names) - 1)
