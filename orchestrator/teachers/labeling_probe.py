"""The fastest labeling settings for the CPU at hand, chosen by a short probe at pool start.

Which settings label fastest depends on the CPU: on an AMD EPYC with ``avx512_bf16``, bf16
labeling ran fastest with eager attention under ``torch.autocast``; on an Intel Xeon with AMX,
with PyTorch's SDPA kernel and a bf16 copy of the weights (autocast re-casts every weight
matrix on every call, which AMX's fast matmuls make the larger cost). So a pool that labels on
a CPU in reduced precision measures, once, candidate settings on a fixed sample, one axis at a
time (:func:`candidates`: attention kernel x weight casting, then the token budget, then the
threads; only the knobs the config leaves unset), compares each candidate's labels with fp32
ones, and keeps the fastest whose argmax agreement passes ``pool.fidelity_threshold``
(:func:`choose`; the incumbent when none passes). An actor of one thread is timed by its CPU
seconds, which other processes on a shared core do not inflate; more threads, by wall time. The
pool's fidelity gate then still checks the chosen settings on the first real texts.

The choice is kept per machine (CPU model, CPU flags, torch version), teacher, precision and
CPU share, in ``<probe root>/labeling_probe/<key>.json`` (:func:`load_choice`,
:func:`save_choice`), so the probe runs once per machine and teacher, not per pool.

Pure: no Ray, no torch at import (:func:`probe_texts` only needs a vocabulary).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

ATTENTIONS = ("sdpa", "eager")
# autocast: fp32 weights, cast to the reduced precision by torch.autocast on every call;
# cast: a reduced-precision copy of the weights, made once (no per-call casts)
WEIGHTS = ("autocast", "cast")
PROBE_BUDGETS = (1024, 2048, 4096)  # padded tokens per batch tried when pool.token_budget is unset


@dataclass(frozen=True)
class LabelSettings:
    """How an actor labels in reduced precision on a CPU."""
    attention: str  # "sdpa" | "eager": the Hugging Face attention kernel
    weights: str  # "autocast" | "cast" (see WEIGHTS)
    token_budget: int  # padded tokens per inference batch
    threads: int  # torch threads

    def __post_init__(self) -> None:
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention={self.attention!r}: choose {', '.join(ATTENTIONS)}")
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights={self.weights!r}: choose {', '.join(WEIGHTS)}")
        if int(self.token_budget) < 1 or int(self.threads) < 1:
            raise ValueError(f"token_budget={self.token_budget} and threads={self.threads} must "
                             "be at least 1")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LabelSettings":
        return cls(attention=str(d["attention"]), weights=str(d["weights"]),
                   token_budget=int(d["token_budget"]), threads=int(d["threads"]))

    def describe(self) -> str:
        weights = "bf16 weights" if self.weights == "cast" else "autocast"
        return (f"{self.attention} attention, {weights}, token budget {self.token_budget}, "
                f"{self.threads} thread{'s' if self.threads != 1 else ''}")


STAGES = ("kernel", "budget", "threads")


def candidates(best: LabelSettings, stage: str, vary_budget: bool = True,
               vary_threads: bool = True) -> list[LabelSettings]:
    """The settings one probe stage measures, ``best`` (the incumbent) first. The probe varies
    one axis at a time, keeping each stage's winner: ``kernel``: attention kernel x weight
    casting; ``budget``: the token budgets of :data:`PROBE_BUDGETS` (only when ``vary_budget``:
    ``pool.token_budget`` unset); ``threads``: the actor's share and half of it (only when
    ``vary_threads``: ``pool.torch_threads`` unset, and a share over one thread: fewer threads
    can win on shared or hyper-threaded cores). A stage with nothing to vary gives ``[best]``."""
    if stage == "kernel":
        out = [LabelSettings(a, w, best.token_budget, best.threads)
               for a in ATTENTIONS for w in WEIGHTS]
    elif stage == "budget":
        out = [dataclasses.replace(best, token_budget=b) for b in PROBE_BUDGETS] \
            if vary_budget else []
    elif stage == "threads":
        out = [dataclasses.replace(best, threads=t) for t in (best.threads // 2,)
               if t >= 1] if vary_threads else []
    else:
        raise ValueError(f"stage={stage!r}: choose {', '.join(STAGES)}")
    return [best] + [c for c in out if c != best]


# a candidate must be this much faster than the incumbent to replace it
MARGIN = 0.05


@dataclass
class Trial:
    """One candidate's probe result: its seconds per round for the sample, and how its labels
    compare with fp32 labels of the same sample."""
    settings: LabelSettings
    seconds: list[float]
    agreement: float
    rmse: float
    n: int  # texts in the sample
    clock: str = "wall"  # "cpu": the actor's CPU seconds (one thread), else wall seconds

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("inf")

    @property
    def texts_per_s(self) -> float:
        s = self.median_s
        return self.n / s if s > 0 else float("inf")

    def as_dict(self) -> dict:
        return {"settings": self.settings.as_dict(), "seconds": [round(x, 6) for x in self.seconds],
                "agreement": self.agreement, "rmse": self.rmse, "n": self.n,
                "clock": self.clock, "texts_per_s": round(self.texts_per_s, 3)}

    @classmethod
    def from_dict(cls, d: dict) -> "Trial":
        return cls(LabelSettings.from_dict(d["settings"]), [float(x) for x in d["seconds"]],
                   float(d["agreement"]), float(d["rmse"]), int(d["n"]),
                   str(d.get("clock", "wall")))


def choose(trials: Sequence[Trial], threshold: float, default: LabelSettings,
           margin: float = MARGIN) -> LabelSettings:
    """The settings of the fastest trial (lowest median seconds) whose agreement with fp32 is at
    least ``threshold``, when it beats ``default``'s trial by more than ``margin`` (a share of
    the default's median); ``default`` otherwise, and when none passes or there are none. Ties
    keep the earlier trial (the default is measured first). The margin keeps a timing wobble
    from switching kernels, whose bf16 labels differ in the last bits, from run to run."""
    passing = [t for t in trials if t.agreement >= threshold and t.seconds]
    if not passing:
        return default
    best = min(passing, key=lambda t: t.median_s)
    incumbent = next((t for t in passing if t.settings == default), None)
    if incumbent is not None and best.median_s >= incumbent.median_s * (1 - margin):
        return default
    return best.settings


# ---------------------------------------------------------------------------------------------
# the sample


def probe_texts(vocab: Sequence[str], n: int = 256, seed: int = 0) -> list[str]:
    """``n`` texts of whole words from a tokenizer's vocabulary (no word pieces, no special
    tokens), 3 to 40 words long, most near 10 to 20 like GLUE sentences: the probe's timing
    sample. Deterministic for a vocabulary and seed. A vocabulary with no plain word (e.g. the
    tests' tiny ones only have a few) still works: its words repeat."""
    import random

    words = [w for w in vocab if w.isalpha() and w.isascii() and not w.startswith("#")]
    if not words:
        raise ValueError("the teacher's vocabulary has no plain words to build probe texts from")
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        length = min(40, max(3, int(rng.gammavariate(3.0, 5.0))))
        texts.append(" ".join(rng.choice(words) for _ in range(length)))
    return texts


# ---------------------------------------------------------------------------------------------
# the machine and the cache of choices


def machine() -> dict:
    """The facts a probe's choice depends on: CPU model, a hash of the CPU flags, whether the
    CPU has AMX (``amx_bf16``), torch version."""
    import torch

    from orchestrator.runtime.machine import cpuinfo_value

    flags = (cpuinfo_value("flags", "Features") or "").split()
    return {"cpu_model": cpuinfo_value("model name") or "unknown",
            "cpu_flags": hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:16],
            "amx": "amx_bf16" in flags, "torch": torch.__version__}


def choice_key(machine_facts: dict, teacher_key: str, precision: str, threads: int,
               token_budget: int | None, vary_threads: bool) -> str:
    """The cache key of one probe: the machine, the teacher, the precision, the actor's thread
    share, and the knobs the config fixed (a fixed budget or thread count is not probed)."""
    from orchestrator.runtime.keys import content_key

    return content_key({"machine": machine_facts, "teacher": teacher_key, "precision": precision,
                        "threads": int(threads), "token_budget": token_budget,
                        "vary_threads": bool(vary_threads)})


def choice_path(root: str | Path, key: str) -> str:
    """Where the probe record of ``key`` lives under ``root`` (a path or fsspec URI)."""
    return f"{str(root).rstrip('/')}/labeling_probe/{key}.json"


def save_choice(root: str | Path, key: str, record: dict) -> str:
    """Write a probe's record (``{"choice": settings dict, "trials": [...], ...}``) atomically."""
    import fsspec

    from orchestrator.runtime.keys import write_bytes_atomic

    fs, path = fsspec.core.url_to_fs(choice_path(root, key))
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    write_bytes_atomic(fs, path, json.dumps(record, indent=1).encode())
    return choice_path(root, key)


def load_choice(root: str | Path, key: str) -> dict | None:
    """A stored probe record, or None when there is none or it cannot be read (then the probe
    runs again and overwrites it)."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(choice_path(root, key))
        record = json.loads(fs.cat_file(path))
        LabelSettings.from_dict(record["choice"])
        return record
    except (OSError, ValueError, KeyError, TypeError):
        return None
