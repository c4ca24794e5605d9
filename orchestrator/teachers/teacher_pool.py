"""A pool of teacher actors that serves soft labels (logits).

Bulk: :class:`TeacherPool` starts ``pool.num_actors`` Ray actors (:data:`TeacherActor`), each
holding one teacher. :meth:`TeacherPool.label_texts` looks texts up in a
:class:`~orchestrator.teachers.cache.SoftLabelCache` first, splits the misses into chunks of similar
length, hands the chunks to the actors (a bounded number in flight per actor, collected with
``ray.wait``), and writes the new labels back to the cache. Inside an actor, texts are tokenized
with truncation (truncations are counted, never an error) and grouped by a padded-token budget
(:mod:`orchestrator.teachers.batching`); results always come back in input order.

Faults: actors are started with ``max_restarts`` and ``max_task_retries``, so a killed actor is
restarted by Ray and its pending calls re-run. When Ray gives up (an actor that cannot restart),
the pool catches the ``RayActorError``, replaces the actor and resubmits the chunk elsewhere.

Resuming: bulk labeling with a cache writes a shard every ``cache_flush_rows`` new labels or
``cache_flush_s`` seconds (and on the way out of an error), each with its seconds in the cache's
ledger. A labeling process killed part-way loses only what it had not flushed; the next call
finds the flushed texts in the cache and sends only the others to the teacher.

Other processes (the Train workers of an on-demand trial) label through the pool's picklable
:class:`PoolClient`, with the same cache-first bulk labeling.

Sizing: Ray does not fail when resources run short, it waits
forever. The pool therefore checks, before starting anything, that the cluster has every resource
its actors ask for (naming the missing one), and waits for its actors with a timeout. The actors
hold their CPUs for the pool's whole life, so size the pool to leave room for the rest:
on 2 CPUs, the driver, one Train worker and one teacher actor must fit together, and Ray Data
needs at least 1 free CPU for its tasks. The default (1 actor x 0.5 CPU) leaves 1.5 CPUs; the pool
logs a warning when it would leave less than 1 CPU free. Each actor sets
``torch.set_num_threads`` to its CPU share (``pool.torch_threads`` overrides). On 2 cores,
actor parallelism buys little: batching by length is what makes the pool fast; more actors pay
on many cores or with one GPU each.

Precision (``pool.precision``, :mod:`orchestrator.runtime.precision`): each actor resolves ``auto``
once, at start, for its device, and labels under ``torch.autocast`` in that precision; a
precision the device cannot run (fp16 on a CPU) fails the pool's start, never a labeling call.
Labels in reduced precision are cached under their own key. The first time a teacher labels in
reduced precision, a fidelity gate labels a fixed sample (the first ``pool.fidelity_sample``
distinct texts it is asked for) in both precisions; below ``pool.fidelity_threshold`` argmax
agreement the pool labels in fp32 from then on, with a warning. The verdict (agreement and
logit RMSE) is kept in ``<cache root>/fidelity/<teacher key>-<precision>.json``, so the gate
runs once per teacher and precision, and is reported in :meth:`_ActorLabeler.fidelity_metrics`.

Labeling settings (``pool.probe``): on a CPU in reduced precision, the pool probes at start
which attention kernel, weight casting (autocast, or a bf16 copy of the weights), token budget
and threads label fastest on this machine within the fidelity threshold, configures every
actor with them and prints the choice (:mod:`orchestrator.teachers.labeling_probe`).
"""
from __future__ import annotations

import atexit
import contextlib
import copy
import dataclasses
import json
import logging
import os
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError

from orchestrator.config import PoolConfig
from orchestrator.runtime import faults
from orchestrator.runtime.keys import write_bytes_atomic
from orchestrator.runtime.precision import autocast, resolve
from orchestrator.runtime.progress import StageProgress
from orchestrator.teachers.batching import (length_sorted_batches, restore_order,
                                            token_budget_batches)
from orchestrator.teachers.cache import SoftLabelCache, text_keys
from orchestrator.teachers.labeling_probe import LabelSettings, Trial
from orchestrator.teachers.teacher_model import (Teacher, TeacherError, check_teacher_path,
                                                 load_teacher)

log = logging.getLogger(__name__)


class PoolResourceError(RuntimeError):
    """The Ray cluster lacks a resource the teacher actors ask for (would otherwise hang)."""


# ---------------------------------------------------------------------------------------------
# one teacher, in one process


# padded tokens per inference batch when pool.token_budget is unset: on CPU, batches that fit
# the caches beat big ones (MiniLM-L6, 2 cores: 2048 ~13% faster than 8192); GPUs want volume
DEFAULT_TOKEN_BUDGET = {"cpu": 2048, "cuda": 16384}


class TeacherWorker:
    """One loaded teacher that labels lists of texts; the body of :data:`TeacherActor`."""

    def __init__(self, teacher_path: str, cfg: PoolConfig | None = None, seed: int = 0):
        import torch

        self.cfg = cfg or PoolConfig()
        self.threads = int(self.cfg.torch_threads or max(1, round(self.cfg.cpus_per_actor)))
        torch.set_num_threads(self.threads)
        self.device = "cuda" if self.cfg.gpus_per_actor > 0 and torch.cuda.is_available() else "cpu"
        self.token_budget = int(self.cfg.token_budget or DEFAULT_TOKEN_BUDGET[self.device])
        # Weights absent from the checkpoint (e.g. an untrained head) are initialised from the
        # global RNG: seed it so every actor, and every restart, computes the same function.
        torch.manual_seed(seed)
        # resolved once, here: a precision the device cannot run fails the actor's start
        self.precision = resolve(self.cfg.precision, self.device, "pool.precision")
        self.teacher: Teacher = load_teacher(teacher_path, device=self.device)
        model = self.teacher.model
        config = getattr(model, "config", None) or getattr(model.encoder, "config", None)
        self.max_positions = getattr(config, "max_position_embeddings", None)
        tok = self.teacher.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.uses_token_types = "token_type_ids" in getattr(tok, "model_input_names", [])
        self.calls = 0
        # how reduced-precision labels are computed (set by the pool's probe); None: defaults
        self.settings: LabelSettings | None = None
        self._cast: dict[str, Teacher] = {}  # precision -> the teacher with weights in it

    def info(self) -> dict:
        import torch

        return {"heads": dict(self.teacher.heads), "multitask": self.teacher.multitask,
                "device": self.device, "threads": torch.get_num_threads(), "pid": os.getpid(),
                "precision": self.precision,
                "token_budget": self.token_budget,
                "settings": self.settings.as_dict() if self.settings is not None else None,
                "cpu_seconds": time.process_time(),  # this process's CPU time so far
                "max_positions": self.max_positions, "calls": self.calls}

    def default_settings(self, precision: str | None = None) -> LabelSettings:
        """The settings labels in ``precision`` (default: the actor's) use unless configured:
        :func:`labeling_attention`'s kernel, autocast, the pool's token budget and threads."""
        return LabelSettings(labeling_attention(precision or self.precision, self.device),
                             "autocast", self.token_budget, self.threads)

    def configure(self, settings: dict | None) -> dict:
        """Label in the actor's reduced precision with ``settings`` (a
        :class:`~orchestrator.teachers.labeling_probe.LabelSettings` as a dict; None: the
        defaults) from now on; fp32 labels keep the defaults. Returns :meth:`info`."""
        self.settings = None if settings is None else LabelSettings.from_dict(settings)
        return self.info()

    def _settings_for(self, precision: str) -> LabelSettings:
        if precision == "fp32" or self.settings is None:
            return self.default_settings(precision)
        return self.settings

    def _teacher_for(self, precision: str, settings: LabelSettings) -> Teacher:
        """The teacher itself, or (weights ``cast``) a copy with its weights in ``precision``,
        made once: autocast re-casts every weight matrix on every call."""
        if precision == "fp32" or settings.weights != "cast":
            return self.teacher
        if precision not in self._cast:
            import torch

            from orchestrator.runtime.precision import DTYPES

            model = copy.deepcopy(self.teacher.model).to(getattr(torch, DTYPES[precision]))
            self._cast[precision] = dataclasses.replace(self.teacher, model=model.eval())
        return self._cast[precision]

    def _encode(self, texts_a: Sequence[str], texts_b: Sequence[str | None] | None,
                max_length: int) -> tuple[list[list[int]], list[list[int]] | None, int]:
        """Token ids (and token types) per text, truncated to ``max_length``; + truncation count."""
        tok = self.teacher.tokenizer
        n = len(texts_a)
        ids: list[list[int]] = [[] for _ in range(n)]
        types: list[list[int]] = [[] for _ in range(n)]
        truncated = 0
        singles = [i for i in range(n) if texts_b is None or texts_b[i] is None]
        pairs = [i for i in range(n) if texts_b is not None and texts_b[i] is not None]
        for idx, is_pair in ((singles, False), (pairs, True)):
            if not idx:
                continue
            a = [texts_a[i] for i in idx]
            b = [texts_b[i] for i in idx] if is_pair else None
            kw = dict(add_special_tokens=True, return_attention_mask=False,
                      return_token_type_ids=self.uses_token_types, verbose=False)
            enc = tok(a, b, truncation=False, **kw)
            over = [j for j, x in enumerate(enc["input_ids"]) if len(x) > max_length]
            cut = None
            if over:
                truncated += len(over)
                cut = tok([a[j] for j in over], [b[j] for j in over] if is_pair else None,
                          truncation=True, max_length=max_length, **kw)
            cut_pos = {j: k for k, j in enumerate(over)}
            for j, i in enumerate(idx):
                src, pos = (cut, cut_pos[j]) if j in cut_pos else (enc, j)
                ids[i] = list(src["input_ids"][pos])
                if self.uses_token_types:
                    types[i] = list(src["token_type_ids"][pos])
        return ids, (types if self.uses_token_types else None), truncated

    def _pad(self, rows: list[list[int]], type_rows: list[list[int]] | None):
        import torch

        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        tts = np.zeros((len(rows), width), dtype=np.int64) if type_rows is not None else None
        for k, r in enumerate(rows):
            ids[k, : len(r)] = r
            mask[k, : len(r)] = 1
            if tts is not None:
                tts[k, : len(r)] = type_rows[k]
        dev = self.device
        return (torch.from_numpy(ids).to(dev), torch.from_numpy(mask).to(dev),
                torch.from_numpy(tts).to(dev) if tts is not None else None)

    def label(self, texts_a: list[str], texts_b: list[str | None] | None = None,
              head: str | None = None, max_length: int = 128,
              precision: str | None = None) -> tuple[np.ndarray, int]:
        """``(logits float32 [N, C] in input order, number of truncated texts)``.

        ``texts_b`` (optional) pairs each ``texts_a[i]`` with a second text; ``None`` entries
        mean a single text. Texts longer than ``max_length`` tokens (capped at the model's
        position limit) are truncated and counted. ``precision``: the actor's own (None) or
        ``fp32``."""
        faults.point("teacher_actor")
        precision = precision or self.precision
        if precision not in ("fp32", self.precision):
            raise ValueError(f"this teacher actor labels in {self.precision} or fp32, not "
                             f"{precision}")
        self.calls += 1
        head = self.teacher.resolve_head(head)
        n_out = self.teacher.heads[head]
        n = len(texts_a)
        if texts_b is not None and len(texts_b) != n:
            raise ValueError(f"{n} texts_a but {len(texts_b)} texts_b")
        for name, texts in (("texts_a", texts_a), ("texts_b", texts_b or [])):
            bad = next((i for i, t in enumerate(texts)
                        if not isinstance(t, str) and not (name == "texts_b" and t is None)), None)
            if bad is not None:
                raise TypeError(f"{name}[{bad}] is {type(texts[bad]).__name__}, not a string")
        if n == 0:
            return np.zeros((0, n_out), dtype=np.float32), 0
        return self._label(texts_a, texts_b, head, max_length, precision)

    def _label(self, texts_a, texts_b, head: str, max_length: int, precision: str,
               settings: LabelSettings | None = None) -> tuple[np.ndarray, int]:
        """:meth:`label` after its checks (``head`` resolved), with ``settings`` (default: the
        actor's for ``precision``)."""
        import torch

        s = settings or self._settings_for(precision)
        max_length = int(max_length)
        if self.max_positions:
            max_length = min(max_length, int(self.max_positions))
        ids, types, truncated = self._encode(texts_a, texts_b, max_length)
        batches = token_budget_batches([len(r) for r in ids], s.token_budget,
                                       self.cfg.max_batch_size)
        outs = []
        teacher = self._teacher_for(precision, s)
        teacher.set_attention(s.attention)
        if torch.get_num_threads() != s.threads:
            torch.set_num_threads(s.threads)
        cast = teacher is not self.teacher  # weights already in `precision`: no autocast
        with torch.inference_mode(), autocast("fp32" if cast else precision, self.device):
            for b in batches:
                input_ids, mask, tts = self._pad([ids[i] for i in b],
                                                 [types[i] for i in b] if types else None)
                out = teacher.logits(input_ids, mask, tts, head=head)
                outs.append(out.float().cpu().numpy())
        return restore_order(batches, outs).astype(np.float32, copy=False), truncated

    def probe(self, candidates: list[dict], n: int = 128, rounds: int = 2,
              max_length: int = 128) -> list[dict]:
        """Time each candidate setting (:class:`LabelSettings` dicts) labeling ``n`` probe texts
        (:func:`~orchestrator.teachers.labeling_probe.probe_texts` from the teacher's vocabulary)
        in the actor's precision, over ``rounds`` rounds in rotating order after one untimed
        warm-up round, and compare each one's labels with fp32 labels of the same texts.
        When every candidate runs one thread the actor's CPU seconds are timed (a shared core's
        other processes do not count), else wall seconds. Returns
        :class:`~orchestrator.teachers.labeling_probe.Trial` dicts, in the order given. Labels
        nothing for a caller and leaves the actor's settings as they were."""
        import torch

        from orchestrator.teachers.labeling_probe import probe_texts

        vocab = self.teacher.tokenizer.get_vocab()
        texts = probe_texts(sorted(vocab, key=vocab.__getitem__), n)
        head = next(iter(self.teacher.heads))
        cands = [LabelSettings.from_dict(c) for c in candidates]
        ref, _ = self._label(texts, None, head, max_length, "fp32")
        clock = "cpu" if all(c.threads == 1 for c in cands) else "wall"
        now = time.process_time if clock == "cpu" else time.perf_counter
        seconds: list[list[float]] = [[] for _ in cands]
        outs: list[np.ndarray | None] = [None] * len(cands)
        try:
            for r in range(rounds + 1):  # round 0 warms up (the cast copy, oneDNN's caches)
                k = r % len(cands)
                for i in list(range(k, len(cands))) + list(range(k)):
                    t0 = now()
                    outs[i], _ = self._label(texts, None, head, max_length, self.precision,
                                             cands[i])
                    if r:
                        seconds[i].append(now() - t0)
        finally:
            torch.set_num_threads(self.threads)
        trials = []
        for c, secs, out in zip(cands, seconds, outs):
            f = fidelity(ref, out)
            trials.append(Trial(c, secs, f["agreement"], f["rmse"], len(texts), clock).as_dict())
        return trials


def labeling_attention(precision: str, device: str) -> str:
    """The attention kernel a teacher labels with. On a CPU in bf16, Hugging Face's eager
    attention (two matmuls and a softmax) labels short GLUE sentences faster than PyTorch's fused
    SDPA kernel, whose bf16 CPU path costs more than it saves at these lengths; in fp32 the two
    are within noise (``benchmarks/teacher_attention.py``). Elsewhere: SDPA."""
    return "eager" if device == "cpu" and precision == "bf16" else "sdpa"


TeacherActor = ray.remote(TeacherWorker)
"""Ray actor class around :class:`TeacherWorker`; start it with ``.options(num_cpus=..., ...)``."""


# ---------------------------------------------------------------------------------------------
# resources


_HINTS = {"CPU": "lower pool.num_actors or pool.cpus_per_actor, or start Ray with more CPUs",
          "GPU": "set pool.gpus_per_actor=0 to run on CPU"}


def _hint(resource: str) -> str:
    return _HINTS.get(resource, f"start a node with --resources='{{\"{resource}\": N}}' or drop "
                                f"it from pool.resources_per_actor")


def check_pool_resources(cfg: PoolConfig, wait_s: float = 10.0) -> None:
    """Raise :class:`PoolResourceError` naming the resource when the cluster cannot host
    ``cfg.num_actors`` teacher actors now; warn when they would leave < 1 CPU for other work.
    Waits up to ``wait_s`` for resources that exist but are still being released."""
    per_actor = {"CPU": float(cfg.cpus_per_actor), "GPU": float(cfg.gpus_per_actor),
                 **{k: float(v) for k, v in cfg.resources_per_actor.items()}}
    per_actor = {k: v for k, v in per_actor.items() if v > 0}
    n = cfg.num_actors
    total = ray.cluster_resources()
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    for r, amount in per_actor.items():
        if total.get(r, 0) <= 0:
            raise PoolResourceError(f"no {r!r} resource in the Ray cluster for teacher actors; "
                                    f"{_hint(r)}")
        largest = max((node.get("Resources", {}).get(r, 0.0) for node in nodes), default=0.0)
        if largest + 1e-9 < amount:
            raise PoolResourceError(f"each teacher actor asks for {amount:g} {r!r} but the "
                                    f"largest node has {largest:g}; {_hint(r)}")
        if total[r] + 1e-9 < amount * n:
            raise PoolResourceError(f"the teacher pool needs {amount * n:g} {r!r} ({n} actors x "
                                    f"{amount:g}) but the cluster has {total[r]:g}; {_hint(r)}")
    deadline = time.monotonic() + wait_s
    while True:
        avail = ray.available_resources()
        short = [(r, a * n, avail.get(r, 0.0)) for r, a in per_actor.items()
                 if avail.get(r, 0.0) + 1e-9 < a * n]
        if not short:
            break
        if time.monotonic() > deadline:
            r, want, have = short[0]
            raise PoolResourceError(
                f"the teacher pool needs {want:g} {r!r} but only {have:g} of {total[r]:g} is free "
                f"(other actors, trials or pools hold the rest); {_hint(r)}")
        time.sleep(0.25)
    if "CPU" in per_actor:
        left = total.get("CPU", 0.0) - per_actor["CPU"] * n
        if left < 1.0:
            log.warning("teacher pool takes %g of %g CPUs, leaving %g: Train workers and Ray Data "
                        "tasks that need a whole CPU will wait (hang) until the pool shuts down",
                        per_actor["CPU"] * n, total.get("CPU", 0.0), left)


# ---------------------------------------------------------------------------------------------
# the pool


def fidelity(ref: np.ndarray, low: np.ndarray) -> dict:
    """How close reduced-precision logits ``low`` are to fp32 logits ``ref`` (same rows):
    ``agreement`` (fraction of rows with the same argmax; for one output, the same sign),
    ``rmse`` (root mean squared logit difference) and ``n`` (rows)."""
    ref = np.asarray(ref, dtype=np.float64)
    low = np.asarray(low, dtype=np.float64)
    if ref.shape != low.shape or ref.ndim != 2:
        raise ValueError(f"logits of shapes {ref.shape} and {low.shape} cannot be compared")
    if ref.shape[1] == 1:
        same = np.sign(ref[:, 0]) == np.sign(low[:, 0])
    else:
        same = ref.argmax(1) == low.argmax(1)
    return {"agreement": float(same.mean()) if len(same) else 1.0,
            "rmse": float(np.sqrt(np.mean((ref - low) ** 2))) if ref.size else 0.0,
            "n": int(ref.shape[0])}


@dataclass
class LabelResult:
    logits: np.ndarray  # float32 [N, C], input order
    hits: int  # input rows served from the cache
    misses: int  # input rows labelled by the teacher
    truncated: int  # distinct texts truncated to max_length (among those labelled now)
    seconds: float
    computed: int = 0  # distinct texts sent to the teacher
    retried_chunks: int = 0  # chunks resubmitted after an actor died
    precision: str = "fp32"  # the precision the texts labeled now were labeled in

    @property
    def texts_per_second(self) -> float:
        return len(self.logits) / self.seconds if self.seconds > 0 else float("inf")


def verdict_path(root: str, teacher_key: str, precision: str) -> tuple:
    """(filesystem, path) of the fidelity gate's verdict for a teacher in ``precision`` under a
    soft-label cache root: the verdict decides which cache its labels go to."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(str(root))
    return fs, f"{path.rstrip('/')}/fidelity/{teacher_key}-{precision}.json"


def read_verdict(root: str, teacher_key: str, precision: str) -> dict | None:
    """The stored verdict (``agreement``, ``rmse``, ``n``, ...), None when there is none or it
    cannot be read (the gate then runs again)."""
    fs, path = verdict_path(root, teacher_key, precision)
    try:
        stored = json.loads(fs.cat_file(path))
        float(stored["agreement"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return stored


def cached_labels(teacher_path: str | os.PathLike, precision: str, fidelity_threshold: float,
                  root: str, texts_a: Sequence[str],
                  texts_b: Sequence[str | None] | None = None, head: str | None = None,
                  max_length: int = 128) -> tuple[LabelResult, dict[str, float]] | None:
    """What :meth:`TeacherPool.label_texts` returns when every text is in the soft-label cache
    under ``root``, read without starting a pool (no actor, no model load), and the gate's
    figures (:meth:`TeacherPool.fidelity_metrics`). ``precision``: the actors' (``pool.precision``
    resolved for their device). None when a text is missing, or when in reduced precision the
    fidelity gate has no stored verdict for this teacher (the verdict picks the cache): then a
    pool labels as usual."""
    from orchestrator.teachers.cache import resolve_head_name
    from orchestrator.teachers.teacher_model import teacher_identity

    t0 = time.perf_counter()
    texts_a = list(texts_a)
    if texts_b is not None and all(b is None for b in texts_b):
        texts_b = None
    if not texts_a or (texts_b is not None and len(texts_b) != len(texts_a)):
        return None
    path = str(check_teacher_path(teacher_path).resolve())
    key = teacher_identity(path)
    labels_in, gate = precision, {}
    if precision != "fp32":
        verdict = read_verdict(root, key, precision)
        if verdict is None:
            return None
        passes = float(verdict["agreement"]) >= fidelity_threshold
        labels_in = precision if passes else "fp32"
        gate = {"label_fidelity_agreement": float(verdict["agreement"]),
                "label_fidelity_rmse": float(verdict["rmse"]),
                "label_reduced_precision": float(passes)}
    cache = SoftLabelCache(root, key, "bundled", max_length, resolve_head_name(path, head),
                           labels_in)
    keys = text_keys(texts_a, list(texts_b) if texts_b is not None else None)
    found, missing = cache.lookup(list(dict.fromkeys(keys)))
    if missing:
        return None
    logits = np.stack([found[k] for k in keys]).astype(np.float32, copy=False)
    return LabelResult(logits=logits, hits=len(keys), misses=0, truncated=0,
                       seconds=time.perf_counter() - t0, precision=labels_in), gate


class _ActorLabeler:
    """Bulk labeling over teacher actors with a soft-label cache; shared by :class:`TeacherPool`
    (which owns the actors) and :class:`PoolClient` (which only holds handles to them). Needs
    ``_actors``, ``info``, ``teacher_key``, ``chunk_size``, ``inflight_per_actor``,
    ``max_chunk_retries``, ``cache_flush_rows``, ``cache_flush_s``, ``fidelity_threshold``,
    ``fidelity_sample``,
    ``_verdicts`` and ``_revive(slot)``."""

    _actors: list
    info: dict
    chunk_size: int
    inflight_per_actor: int
    max_chunk_retries: int
    cache_flush_rows: int
    cache_flush_s: float
    fidelity_threshold: float
    fidelity_sample: int
    _verdicts: dict  # reduced precision -> {"agreement", "rmse", "n", ...} of the gate

    def _revive(self, slot: int) -> None:
        raise NotImplementedError

    # -- precision and the fidelity gate ----------------------------------------------------

    @property
    def actor_precision(self) -> str:
        """The precision the actors were started in (``pool.precision`` resolved)."""
        return self.info.get("precision", "fp32")

    @property
    def precision(self) -> str:
        """The precision labels are computed in: the actors' own, unless the fidelity gate has
        failed it (then fp32); the actors' own while the gate has not run yet."""
        p = self.actor_precision
        verdict = self._verdicts.get(p)
        return "fp32" if verdict is not None and not self._passes(verdict) else p

    def _passes(self, verdict: dict) -> bool:
        return float(verdict["agreement"]) >= self.fidelity_threshold

    def _verdict_path(self, root: str) -> tuple:
        return verdict_path(root, self.teacher_key, self.actor_precision)

    def settle_precision(self, texts_a: Sequence[str], texts_b: Sequence[str | None] | None,
                         head: str | None = None, max_length: int = 128,
                         root: str | None = None) -> str:
        """Run the fidelity gate once for this teacher in reduced precision (no-op in fp32):
        label the first ``fidelity_sample`` distinct texts in fp32 and in the actors' precision,
        compare, remember the verdict (in ``<root>/fidelity/`` when a cache root is given) and
        return the precision labels will be computed in."""
        p = self.actor_precision
        if p == "fp32":
            return p
        if p not in self._verdicts and root is not None:
            stored = read_verdict(root, self.teacher_key, p)
            if stored is not None:
                self._verdicts[p] = stored
        if p not in self._verdicts:
            if not texts_a:
                return p  # nothing to sample yet: decided on the first texts
            self._verdicts[p] = self._run_gate(texts_a, texts_b, head, max_length)
            if root is not None:
                fs, path = self._verdict_path(root)
                fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
                write_bytes_atomic(fs, path, json.dumps(self._verdicts[p], indent=1).encode())
            v = self._verdicts[p]
            if self._passes(v):
                log.info("fidelity gate: %s labels agree with fp32 on %.2f%% of %d texts (logit "
                         "RMSE %.4g): labeling in %s", p, 100 * v["agreement"], v["n"],
                         v["rmse"], p)
            else:
                log.warning(
                    "fidelity gate: %s labels of teacher %s agree with fp32 labels (argmax) on "
                    "only %.2f%% of %d texts, below pool.fidelity_threshold=%.2f%% (logit RMSE "
                    "%.4g): labeling in fp32 instead", p, self.teacher_key,
                    100 * v["agreement"], v["n"], 100 * self.fidelity_threshold, v["rmse"])
        return self.precision

    def _run_gate(self, texts_a, texts_b, head, max_length) -> dict:
        texts_a = list(texts_a)
        texts_b = list(texts_b) if texts_b is not None else None
        seen: dict[str, int] = {}
        for i, k in enumerate(text_keys(texts_a, texts_b)):
            if len(seen) >= self.fidelity_sample:
                break
            seen.setdefault(k, i)
        idx = list(seen.values())
        a = [texts_a[i] for i in idx]
        b = [texts_b[i] for i in idx] if texts_b is not None else None
        head = self.resolve_head(head)[0]
        actor = self._actors[0]
        ref, _ = ray.get(actor.label.remote(a, b, head, max_length, "fp32"))
        low, _ = ray.get(actor.label.remote(a, b, head, max_length, self.actor_precision))
        return fidelity(ref, low) | {"teacher_key": self.teacher_key,
                                     "precision": self.actor_precision, "head": head,
                                     "max_length": int(max_length)}

    def fidelity_metrics(self) -> dict[str, float]:
        """The gate's figures for MLflow: ``label_fidelity_agreement`` (argmax agreement with
        fp32), ``label_fidelity_rmse`` (logit RMSE), ``label_reduced_precision`` (1: labels in
        bf16/fp16, 0: fp32); ``{}`` while the gate has not run (or in fp32)."""
        v = self._verdicts.get(self.actor_precision)
        if v is None:
            return {}
        return {"label_fidelity_agreement": float(v["agreement"]),
                "label_fidelity_rmse": float(v["rmse"]),
                "label_reduced_precision": float(self.precision != "fp32")}

    def resolve_head(self, head: str | None) -> tuple[str, int]:
        """``(head name, number of outputs)``, as the teacher resolves it."""
        t = Teacher(model=None, tokenizer=None, heads=self.info["heads"], path=self.teacher_path,
                    multitask=self.info["multitask"])
        name = t.resolve_head(head)
        return name, int(self.info["heads"][name])

    def cache(self, root: str, head: str | None = None, max_length: int = 128) -> SoftLabelCache:
        """The soft-label cache for this pool's teacher under ``root``, in the precision labels
        are computed in now (:attr:`precision`; :meth:`label_texts` moves to the fp32 cache
        when the fidelity gate fails the actors' precision)."""
        return SoftLabelCache(root, self.teacher_key, "bundled", max_length,
                              self.resolve_head(head)[0], self.precision)

    def _check_cache(self, cache: SoftLabelCache, head: str, max_length: int) -> None:
        problems = []
        if cache.teacher_key != self.teacher_key:
            problems.append(f"teacher {cache.teacher_key} != {self.teacher_key}")
        if cache.head != head:
            problems.append(f"head {cache.head!r} != {head!r}")
        if cache.max_length != int(max_length):
            problems.append(f"max_length {cache.max_length} != {max_length}")
        if cache.precision != self.precision:
            problems.append(f"precision {cache.precision} != {self.precision}")
        if problems:
            raise ValueError(f"{cache!r} does not match this labeling request ("
                             + "; ".join(problems) + "): use pool.cache(root, head, max_length)")

    # -- bulk labeling ----------------------------------------------------------------------

    def label_texts(self, texts_a: Sequence[str], texts_b: Sequence[str | None] | None = None,
                    head: str | None = None, max_length: int = 128,
                    cache: SoftLabelCache | None = None, progress: bool = True, *,
                    log: Callable[[str], None] | None = None,
                    task: str | None = None) -> LabelResult:
        """Logits for every text (pair), in input order: cache hits first, the rest computed
        across the actors (duplicates once) and written to the cache.

        With a cache, labels are flushed as shards every ``cache_flush_rows`` texts or
        ``cache_flush_s`` seconds, each with its seconds in the cache's ledger: a call killed
        part-way keeps what it flushed, and the next call computes only the rest. ``log``: gets
        a progress line (distinct texts done of all, rate, time left; texts found in the cache
        count as done) at most every 30 s and at the end, prefixed ``[label] <task>`` (``task``
        defaults to the head's name)."""
        t0 = time.perf_counter()
        if not self._actors:
            raise RuntimeError("teacher pool is shut down")
        texts_a = list(texts_a)
        if texts_b is not None:
            texts_b = list(texts_b)
            if len(texts_b) != len(texts_a):
                raise ValueError(f"{len(texts_a)} texts_a but {len(texts_b)} texts_b")
            if all(b is None for b in texts_b):
                texts_b = None
        head_name, n_out = self.resolve_head(head)
        before = self.precision
        precision = self.settle_precision(texts_a, texts_b, head_name, max_length,
                                          cache.root if cache is not None else None)
        if cache is not None and cache.precision == before != precision:
            cache = cache.with_precision(precision)  # the gate failed the reduced precision
        if cache is not None:
            self._check_cache(cache, head_name, max_length)
        keys = text_keys(texts_a, texts_b)
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        if cache is not None:
            labels, missing = cache.lookup(list(first))
        else:
            labels, missing = {}, list(first)
        cached = set(labels)
        todo = [(k, texts_a[first[k]], texts_b[first[k]] if texts_b is not None else None)
                for k in missing]
        meter = StageProgress("label", task or head_name, len(first), unit="texts",
                              done=len(first) - len(todo), log=log, bar=progress)
        truncated, retried = self._compute(todo, head_name, max_length, labels, cache, progress,
                                           precision, meter, t0)
        meter.finish()
        logits = (np.stack([labels[k] for k in keys]).astype(np.float32, copy=False) if keys
                  else np.zeros((0, n_out), dtype=np.float32))
        hits = sum(1 for k in keys if k in cached)
        return LabelResult(logits=logits, hits=hits, misses=len(keys) - hits, truncated=truncated,
                           seconds=time.perf_counter() - t0, computed=len(todo),
                           retried_chunks=retried, precision=precision)

    def _compute(self, todo: list[tuple[str, str, str | None]], head: str, max_length: int,
                 labels: dict, cache: SoftLabelCache | None, progress: bool,
                 precision: str, meter: StageProgress | None = None,
                 t_start: float | None = None) -> tuple[int, int]:
        if not todo:
            return 0, 0
        call = uuid.uuid4().hex[:12]  # this call's id in the cache's ledger
        last_flush = time.perf_counter() if t_start is None else t_start
        unsaved: dict[str, np.ndarray] = {}

        def flush() -> None:
            # the seconds since the previous flush (the first: since the call began) go to the
            # ledger with the shard that holds their labels
            nonlocal unsaved, last_flush
            if cache is None or not unsaved:
                return
            now = time.perf_counter()
            cache.put(unsaved, seconds=now - last_flush, call=call)
            unsaved, last_flush = {}, now

        chunks = length_chunks(todo, self.chunk_size)
        pairs = any(t[2] is not None for t in todo)
        payload = [([t[1] for t in c], [t[2] for t in c] if pairs else None) for c in chunks]
        queue = deque(range(len(chunks)))
        inflight: dict = {}
        load = [0] * len(self._actors)
        attempts = [0] * len(chunks)
        truncated = retried = 0
        try:
            while queue or inflight:
                while queue:
                    slot = min(range(len(self._actors)), key=load.__getitem__)
                    if load[slot] >= self.inflight_per_actor:
                        break
                    cid = queue.popleft()
                    a, b = payload[cid]
                    ref = self._actors[slot].label.remote(a, b, head, max_length, precision)
                    inflight[ref] = (cid, slot)
                    load[slot] += 1
                ready, _ = ray.wait(list(inflight), num_returns=1)
                for ref in ready:
                    cid, slot = inflight.pop(ref)
                    load[slot] -= 1
                    try:
                        out, n_trunc = ray.get(ref)
                    except RayActorError as e:
                        attempts[cid] += 1
                        if attempts[cid] > self.max_chunk_retries:
                            raise RuntimeError(f"chunk {cid} failed {attempts[cid]} times: the "
                                               f"teacher actors keep dying ({e})") from e
                        log.warning("teacher actor %d died (%s); resubmitting chunk %d",
                                    slot, type(e).__name__, cid)
                        retried += 1
                        self._revive(slot)
                        queue.appendleft(cid)
                        continue
                    truncated += n_trunc
                    for (k, _, _), row in zip(chunks[cid], out):
                        labels[k] = row
                        unsaved[k] = row
                    if meter is not None:
                        meter.update(len(out))
                    faults.point("labeling")
                    if (len(unsaved) >= self.cache_flush_rows
                            or time.perf_counter() - last_flush >= self.cache_flush_s):
                        flush()
        finally:
            flush()  # keep finished work even when labeling fails part-way
        return truncated, retried


def length_chunks(todo: list[tuple[str, str, str | None]], size: int) -> list[list[tuple]]:
    """The ``(key, text_a, text_b)`` items to label in chunks of ``size`` (one actor call each),
    longest texts first: similar lengths in one chunk leave little padding in the actors'
    batches."""
    lengths = [len(a) + len(b or "") for _, a, b in todo]
    return [[todo[i] for i in c] for c in length_sorted_batches(lengths, size, descending=True)]


class TeacherPool(_ActorLabeler):
    """``cfg.num_actors`` teacher actors; bulk labeling with a shared cache.

    ``chunk_size``: texts per actor call. ``inflight_per_actor``:
    calls queued per actor (2 overlaps transfer and compute). ``max_restarts`` /
    ``max_task_retries``: Ray-level recovery; ``max_chunk_retries``: pool-level resubmissions
    of one chunk after Ray gives up. ``cache_flush_rows`` / ``cache_flush_s``: bulk labeling
    writes a cache shard after this many new labels or seconds, whichever comes first (what a
    killed labeling call loses at most)."""

    def __init__(self, teacher_path: str | os.PathLike, cfg: PoolConfig | None = None, *,
                 chunk_size: int = 256, inflight_per_actor: int = 2, max_restarts: int = 3,
                 max_task_retries: int = 3, max_chunk_retries: int = 3,
                 start_timeout_s: float = 300.0, cache_flush_rows: int = 50_000,
                 cache_flush_s: float = 60.0, seed: int = 0,
                 probe_root: str | os.PathLike | None = None):
        self.cfg = cfg or PoolConfig()
        if self.cfg.num_actors < 1 or self.cfg.cpus_per_actor < 0 or self.cfg.gpus_per_actor < 0:
            raise ValueError("pool.num_actors must be >= 1, pool.cpus_per_actor and "
                             "pool.gpus_per_actor >= 0")
        if chunk_size < 1 or inflight_per_actor < 1:
            raise ValueError("chunk_size and inflight_per_actor must be >= 1")
        self.teacher_path = str(check_teacher_path(teacher_path).resolve())
        self.chunk_size, self.inflight_per_actor = chunk_size, inflight_per_actor
        self.max_restarts, self.max_task_retries = max_restarts, max_task_retries
        self.max_chunk_retries = max_chunk_retries
        self.start_timeout_s = start_timeout_s
        self.cache_flush_rows = cache_flush_rows
        self.cache_flush_s = float(cache_flush_s)
        self.seed = seed
        self.fidelity_threshold = float(self.cfg.fidelity_threshold)
        self.fidelity_sample = int(self.cfg.fidelity_sample)
        self._verdicts: dict = {}
        self._teacher_key: str | None = None
        self._actors: list = []
        self.probe_root = str(probe_root) if probe_root is not None else None
        self.labeling: dict | None = None  # the probe's choice (see _settle_settings)
        if self.cfg.gpus_per_actor <= 0:  # a CPU precision is checked here, before any actor
            resolve(self.cfg.precision, "cpu", "pool.precision")
        if not ray.is_initialized():
            from orchestrator.runtime.ray_runtime import init_ray
            init_ray(log=lambda m: None)
        check_pool_resources(self.cfg)
        try:
            self._actors = [self._new_actor() for _ in range(self.cfg.num_actors)]
            infos = self._wait_ready(self._actors)
            self.info = infos[0]
            self._settle_settings()
        except BaseException:
            self.shutdown()
            raise
        atexit.register(self.shutdown)

    # -- actors -----------------------------------------------------------------------------

    def _new_actor(self):
        return TeacherActor.options(
            num_cpus=self.cfg.cpus_per_actor, num_gpus=self.cfg.gpus_per_actor,
            resources=dict(self.cfg.resources_per_actor) or None,
            max_restarts=self.max_restarts, max_task_retries=self.max_task_retries,
            # outside any placement group of the caller (a Tune trial reserves only its own
            # token CPU share; actors captured into it could never be scheduled)
            scheduling_strategy="DEFAULT",
        ).remote(self.teacher_path, self.cfg, self.seed)

    def _wait_ready(self, actors: list) -> list[dict]:
        try:
            return ray.get([a.info.remote() for a in actors], timeout=self.start_timeout_s)
        except GetTimeoutError:
            raise PoolResourceError(
                f"teacher actors did not start within {self.start_timeout_s:g}s; free resources "
                f"now: {ray.available_resources()}; {_hint('CPU')}") from None
        except RayActorError as e:
            lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
            cause = lines[-1] if lines else type(e).__name__  # the constructor's own error
            raise TeacherError(f"teacher actors for {self.teacher_path} failed to start: "
                               f"{cause}") from e

    @property
    def actors(self) -> list:
        return list(self._actors)

    # -- the labeling settings for this machine ---------------------------------------------

    def _settle_settings(self) -> None:
        """On a CPU in reduced precision (``pool.probe``): the fastest labeling settings that
        pass the fidelity threshold (:mod:`orchestrator.teachers.labeling_probe`), from the
        record of an earlier probe on this machine and teacher when there is one (under
        ``probe_root``, else in this process), else probed now on the first actor; every actor
        is configured with them and the choice is printed."""
        from orchestrator.teachers import labeling_probe as lp

        if (not self.cfg.probe or self.info.get("device") != "cpu"
                or self.actor_precision == "fp32"):
            return
        default = LabelSettings(labeling_attention(self.actor_precision, "cpu"), "autocast",
                                int(self.info["token_budget"]), int(self.info["threads"]))
        vary_threads = self.cfg.torch_threads is None
        facts = lp.machine()
        key = lp.choice_key(facts, self.teacher_key, self.actor_precision, default.threads,
                            self.cfg.token_budget, vary_threads)
        record = _PROBED.get(key)
        if record is None and self.probe_root is not None:
            record = lp.load_choice(self.probe_root, key)
        source = "probed before"
        if record is None:
            source = "probed now"
            t0 = time.perf_counter()
            chosen, trials, failed = default, [], False
            for stage in lp.STAGES:  # one axis at a time, each stage's winner carried on
                cands = lp.candidates(chosen, stage, vary_budget=self.cfg.token_budget is None,
                                      vary_threads=vary_threads)
                if len(cands) < 2:
                    continue
                try:
                    got = ray.get(self._actors[0].probe.remote([c.as_dict() for c in cands]))
                except ray.exceptions.RayTaskError as e:  # labeling works without the probe
                    log.warning("labeling probe failed (%s); keeping %s", e, chosen.describe())
                    failed = True
                    break
                trials += [dict(t, stage=stage) for t in got]
                chosen = lp.choose([lp.Trial.from_dict(t) for t in got],
                                   self.fidelity_threshold, chosen)
            record = {"choice": chosen.as_dict(), "default": default.as_dict(),
                      "threshold": self.fidelity_threshold, "trials": trials,
                      "machine": facts, "teacher_key": self.teacher_key,
                      "precision": self.actor_precision,
                      "probe_seconds": round(time.perf_counter() - t0, 3)}
            if self.probe_root is not None and not failed:
                with contextlib.suppress(OSError):  # a read-only root: probe again next time
                    lp.save_choice(self.probe_root, key, record)
        _PROBED[key] = record
        infos = ray.get([a.configure.remote(record["choice"]) for a in self._actors])
        self.info = infos[0]
        self.labeling = record
        print(describe_choice(record, source), flush=True)

    def _configure(self, actor) -> None:
        """Give a restarted or new actor the pool's labeling settings (Ray restarts an actor
        with its constructor's arguments only)."""
        if self.labeling is not None:
            ray.get(actor.configure.remote(self.labeling["choice"]), timeout=self.start_timeout_s)

    def _revive(self, slot: int) -> None:
        """After a RayActorError: keep the actor if Ray restarted it, else replace it."""
        actor = self._actors[slot]
        try:
            ray.get(actor.info.remote(), timeout=self.start_timeout_s)
            self._configure(actor)
            return
        except (RayActorError, GetTimeoutError):
            pass
        log.warning("teacher actor %d is gone; starting a replacement", slot)
        with contextlib.suppress(Exception):
            ray.kill(actor, no_restart=True)
        fresh = self._new_actor()
        self._wait_ready([fresh])
        self._configure(fresh)
        self._actors[slot] = fresh

    # -- heads, caches ----------------------------------------------------------------------

    @property
    def teacher_key(self) -> str:
        if self._teacher_key is None:
            from orchestrator.teachers.teacher_model import teacher_identity

            self._teacher_key = teacher_identity(self.teacher_path)
        return self._teacher_key

    def client(self) -> PoolClient:
        """A picklable handle on this pool's actors (see :class:`PoolClient`)."""
        if not self._actors:
            raise RuntimeError("teacher pool is shut down")
        return PoolClient(self.actors, dict(self.info), self.teacher_key, self.teacher_path,
                          self.chunk_size, self.inflight_per_actor, self.max_chunk_retries,
                          self.cache_flush_rows, cache_flush_s=self.cache_flush_s,
                          fidelity_threshold=self.fidelity_threshold,
                          fidelity_sample=self.fidelity_sample, verdicts=dict(self._verdicts))

    # -- lifecycle --------------------------------------------------------------------------

    def shutdown(self, wait_s: float = 30.0) -> None:
        """Kill the actors and wait, up to ``wait_s``, until Ray reports each one dead. Idempotent.

        ``ray.kill`` only asks: the actor may still answer a call, and still hold its CPUs, for a
        moment after it returns. Waiting makes "shut down" mean it, so the next pool or Ray Data
        job that needs those CPUs is not left pending behind a dying actor."""
        if not ray.is_initialized():
            self._actors = []
            return
        for a in self._actors:
            with contextlib.suppress(Exception):
                ray.kill(a, no_restart=True)
        _wait_dead(self._actors, wait_s)
        self._actors = []
        with contextlib.suppress(Exception):
            atexit.unregister(self.shutdown)

    def __enter__(self) -> "TeacherPool":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"TeacherPool({self.teacher_path!r}, actors={len(self._actors)})"


# probe records by choice key, for pools started in this process without a probe root
_PROBED: dict[str, dict] = {}


def describe_choice(record: dict, source: str = "probed now") -> str:
    """One line on a probe's choice: the machine, the settings and their rate on the probe's
    sample, against the default settings' rate."""
    m = record.get("machine", {})
    choice = LabelSettings.from_dict(record["choice"])
    rates = {json.dumps(t["settings"], sort_keys=True): t for t in record.get("trials", [])}
    mine = rates.get(json.dumps(choice.as_dict(), sort_keys=True))
    base = rates.get(json.dumps(record.get("default", {}), sort_keys=True))
    rate = (f": {mine['texts_per_s']:.0f} texts/s on the probe's {mine['n']} texts, agreement "
            f"with fp32 {mine['agreement']:.2%}" if mine else "")
    vs = (f" (defaults: {base['texts_per_s']:.0f} texts/s)" if base and base is not mine else "")
    return (f"teacher pool: labeling in {record.get('precision', '?')} on "
            f"{m.get('cpu_model', '?')} ({'AMX' if m.get('amx') else 'no AMX'}) with "
            f"{choice.describe()}{rate}{vs}; {source}")


def _wait_dead(actors: list, wait_s: float) -> None:
    """Probe each killed actor until a call to it fails with RayActorError (Ray has marked it
    dead and released its resources), or until ``wait_s`` has passed; then warn and go on."""
    deadline = time.monotonic() + wait_s
    for a in actors:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("a killed teacher actor still answered after %.0f s", wait_s)
                return
            try:
                ray.get(a.__ray_ready__.remote(), timeout=min(left, 5.0))
            except RayActorError:
                break
            except GetTimeoutError:
                continue
            except Exception:  # Ray itself going down: nothing left to wait for
                return
            time.sleep(0.05)


@dataclass
class PoolClient(_ActorLabeler):
    """A picklable handle on a running :class:`TeacherPool`, for labeling from another process
    (the Train workers of an on-demand trial): the same cache-first bulk labeling as
    :meth:`TeacherPool.label_texts`. The pool owns the actors; a client never starts or replaces
    one: Ray restarts a killed actor (``max_restarts``), and the client waits for it or fails."""
    actors: list
    info: dict
    teacher_key: str
    teacher_path: str
    chunk_size: int = 256
    inflight_per_actor: int = 2
    max_chunk_retries: int = 3
    cache_flush_rows: int = 50_000
    restart_timeout_s: float = 120.0
    cache_flush_s: float = 60.0
    fidelity_threshold: float = 0.995
    fidelity_sample: int = 512
    verdicts: dict | None = None  # the pool's fidelity verdicts when the client was made

    def __post_init__(self) -> None:
        self._actors = list(self.actors)
        self._verdicts = dict(self.verdicts or {})

    def _revive(self, slot: int) -> None:
        try:
            ray.get(self._actors[slot].info.remote(), timeout=self.restart_timeout_s)
            settings = self.info.get("settings")
            if settings is not None:  # a restarted actor starts with the default settings
                ray.get(self._actors[slot].configure.remote(settings),
                        timeout=self.restart_timeout_s)
        except (RayActorError, GetTimeoutError) as e:
            raise TeacherError(f"teacher actor {slot} of {self.teacher_path} is gone and did "
                               f"not restart ({type(e).__name__}); the pool that owns it "
                               "must replace it") from e
