"""Pipeline stages, in order: data -> teacher -> transfer set (augment) -> soft labels -> bundle.

Each stage is a function of typed configs that returns where its (cached) result lies. Trials call
:func:`prepare_bundle` too: when their settings match an earlier call, everything is reused.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.parquet as pq

from orchestrator.config import TEACHER_EMBEDDINGS, ExperimentConfig, resolved_embeddings
from orchestrator.runtime.keys import atomic_dir, content_key, file_digest
from orchestrator.training.bundle import write_split, write_texts
from students.registry import student_kind
from tasks.data import Example, TaskData
from tasks.loaders import data_fingerprint, load_task_data, task_from_config
from tasks.registry import TaskSpec

BUNDLE_VERSION = 1


@dataclass
class TeacherRef:
    """Which teacher labels a task: its directory, its identity key and the head to read."""
    path: str
    key: str
    head: str
    max_length: int


@dataclass
class BundleResult:
    path: Path
    key: str
    reused: bool
    transfer_sizes: dict[str, int] = field(default_factory=dict)
    label_stats: dict[str, float] = field(default_factory=dict)
    augment_stats: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0


def task_names(cfg: ExperimentConfig) -> list[str]:
    return [get_task_for(cfg, t).name for t in (cfg.tasks or [cfg.data.task])]


def get_task_for(cfg: ExperimentConfig, name: str) -> TaskSpec:
    """The spec of task ``name`` of the experiment, as every stage sees it
    (:func:`tasks.loaders.task_spec`: label names given or inferred, regression, pair)."""
    return task_from_config(cfg.data, name)


def load_data(cfg: ExperimentConfig) -> dict[str, TaskData]:
    """Load every task of the experiment (validated at the boundary by the loaders)."""
    out = {}
    for name in cfg.tasks or [cfg.data.task]:
        spec = get_task_for(cfg, name)
        out[spec.name] = load_task_data(replace(cfg.data, task=spec.name), spec)
    return out


# ---------------------------------------------------------------------------------------------
# transfer set

def transfer_examples(cfg: ExperimentConfig, data: TaskData, work_root: Path, mask_token: str,
                      log: Callable = print) -> tuple[list[Example], dict, Path | None]:
    """The student's training texts: originals, plus Tang augmentation when enabled."""
    from orchestrator.stages.augment_stage import augment_dataset

    if not cfg.augment.enabled:
        return list(data.train), {"n_in": len(data.train), "n_out": len(data.train)}, None
    res = augment_dataset(data.train, cfg.augment, work_root / "transfer",
                          data_key=f"{data.task.name}:{data_fingerprint(data.train)}",
                          mask_token=mask_token, pair_mode=cfg.augment.pair_mode, log=log,
                          task=data.task.name)
    log(f"[augment] {data.task.name}: {res.n_in} -> {res.n_out} examples "
        f"({'reused' if res.reused else f'{res.seconds:.1f}s'})")
    t = pq.read_table(res.path)
    ta, tb = t.column("text_a").to_pylist(), t.column("text_b").to_pylist()
    lab = t.column("label").to_pylist()
    ids = t.column("example_id").to_pylist()
    aug = t.column("aug_index").to_pylist()
    examples = [Example(id=i * 1000 + k, text_a=a, text_b=b, label=y)
                for i, k, a, b, y in zip(ids, aug, ta, tb, lab)]
    stats = {"n_in": res.n_in, "n_out": res.n_out, **{k: v for k, v in res.stats.items()
                                                      if isinstance(v, (int, float))}}
    return examples, stats, res.path


# ---------------------------------------------------------------------------------------------
# soft labels

def label_examples(examples: list[Example], teacher: TeacherRef, cfg: ExperimentConfig,
                   work_root: Path, log: Callable = print, pool=None, task: str | None = None):
    """Teacher logits for ``examples`` through the soft-label cache and the teacher pool
    (``pool``: a running pool of this teacher, e.g. a multi-task teacher serving several tasks;
    else one is started for the call). Progress lines go to ``log``, named by ``task``
    (default: the teacher's head)."""
    from orchestrator.teachers.teacher_pool import TeacherPool

    if pool is None:
        cached = labels_from_cache(examples, teacher, cfg, work_root)
        if cached is not None:
            _log_cached(log, task or teacher.head, cached[0])
            return cached[0]
        with TeacherPool(teacher.path, cfg.pool,
                         probe_root=cfg.work_root) as own:
            return label_examples(examples, teacher, cfg, work_root, log, own, task)
    texts_a = [e.text_a for e in examples]
    texts_b = [e.text_b for e in examples] if examples and examples[0].text_b is not None else None
    root = str(work_root / "soft_labels")
    # the fidelity gate first (reduced precision only): it decides which cache the labels use
    pool.settle_precision(texts_a, texts_b, teacher.head, teacher.max_length, root)
    cache = pool.cache(root, teacher.head, teacher.max_length)
    res = pool.label_texts(texts_a, texts_b, head=teacher.head,
                           max_length=teacher.max_length, cache=cache, log=log,
                           task=task or teacher.head)
    gate = pool.fidelity_metrics()
    gate_note = (f"; {pool.actor_precision} vs fp32 argmax agreement "
                 f"{gate['label_fidelity_agreement']:.2%}, logit RMSE "
                 f"{gate['label_fidelity_rmse']:.3g}" if gate else "")
    log(f"[label] {teacher.head}: {len(examples)} texts, {res.hits} cache hits, "
        f"{res.misses} labeled in {res.seconds:.1f}s in {res.precision} ({res.truncated} "
        f"truncated{gate_note})")
    return res


def labels_from_cache(examples: list[Example], teacher: TeacherRef, cfg: ExperimentConfig,
                      work_root: Path):
    """``(LabelResult, gate figures)`` when the soft-label cache holds every example's label
    for this teacher and precision, read without starting a teacher pool (a rerun, another
    row or trial on the same transfer set); None otherwise."""
    from orchestrator.teachers.teacher_pool import cached_labels

    texts_b = [e.text_b for e in examples] if examples and examples[0].text_b is not None \
        else None
    return cached_labels(teacher.path, _label_precision(cfg), cfg.pool.fidelity_threshold,
                         str(work_root / "soft_labels"), [e.text_a for e in examples], texts_b,
                         teacher.head, teacher.max_length)


def _log_cached(log: Callable, task: str, res) -> None:
    log(f"[label] {task}: {len(res.logits)} texts, all from the soft-label cache in "
        f"{res.precision} (no teacher pool started)")


def data_stage_seconds(cfg: ExperimentConfig, data: dict[str, TaskData],
                       teachers: dict[str, TeacherRef]) -> dict[str, dict[str, float | None]]:
    """Per task, the seconds the two data stages spent, each summed over every call and
    resumption that contributed (what a results report quotes):

    - ``augment``: this config's transfer set
      (:func:`orchestrator.stages.augment_stage.stage_seconds`); None when augmentation is off,
      the set is not finished, or it predates the record;
    - ``label``: all bulk labeling into the task teacher's soft-label cache (its head and max
      length, every precision), whichever transfer sets it was for (with and without
      augmentation share the cache;
      :meth:`orchestrator.teachers.cache.SoftLabelCache.labeling_seconds`); 0.0 when none was
      recorded.

    Reads files only: no Ray, no model loaded (each teacher's files are hashed once)."""
    from orchestrator.stages.augment_stage import augment_cache_key, stage_seconds
    from orchestrator.teachers.cache import namespace_key, read_ledger, resolve_head_name
    from orchestrator.teachers.teacher_model import mask_token as teacher_mask_token
    from orchestrator.teachers.teacher_model import teacher_identity

    work_root = Path(cfg.work_root)
    identities: dict[str, str] = {}
    out: dict[str, dict[str, float | None]] = {}
    for t, d in data.items():
        ref = teachers[t]
        aug_s = None
        if cfg.augment.enabled:
            # the mask token of the first teacher, as prepare_bundle builds every transfer set
            mask = teacher_mask_token(next(iter(teachers.values())).path)
            key = augment_cache_key(cfg.augment, f"{d.task.name}:{data_fingerprint(d.train)}",
                                    mask, cfg.augment.pair_mode)
            with contextlib.suppress(FileNotFoundError):
                aug_s = stage_seconds(work_root / "transfer" / key)
        if ref.path not in identities:
            identities[ref.path] = teacher_identity(ref.path)
        head = resolve_head_name(ref.path, ref.head)
        label_s = sum(read_ledger(str(work_root / "soft_labels"),
                                  namespace_key(identities[ref.path], "bundled", ref.max_length,
                                                head, p))["seconds"]
                      for p in ("fp32", "bf16", "fp16"))
        out[t] = {"augment": aug_s, "label": label_s}
    return out


# ---------------------------------------------------------------------------------------------
# student encoding and the bundle

def bundle_key(cfg: ExperimentConfig, data: dict[str, TaskData], teachers: dict[str, TeacherRef]) -> str:
    s = cfg.student
    kind = student_kind(s.arch)
    emb = None
    if s.embeddings == TEACHER_EMBEDDINGS and kind.words:
        from orchestrator.teachers.teacher_vectors import key_part

        emb = key_part(cfg.teacher.model)  # the base model's identity (files or hub name)
    elif s.embeddings and kind.words:
        emb = file_digest(s.embeddings) if Path(s.embeddings).is_file() else s.embeddings
    return content_key({
        "v": BUNDLE_VERSION,
        "tasks": {t: {"data": data_fingerprint(d.train),
                      "dev": {k: data_fingerprint(v) for k, v in d.dev.items()},
                      "teacher": asdict(teachers[t])} for t, d in data.items()},
        "augment": asdict(cfg.augment) | {"num_workers": None, "chunk_size": None}
        if cfg.augment.enabled else None,
        "encoding": kind.encoding,
        "vocab": [s.vocab_min_freq, s.vocab_max_size, s.max_length], "embeddings": emb,
        "embed_dim": s.embed_dim if not s.embeddings else None,
        # on-demand bundles hold texts instead of logits (absent key: precomputed, as before)
        **({"soft_labels": cfg.train.soft_labels} if cfg.train.soft_labels != "precomputed" else {}),
        # the labeling precision the pool runs in (absent for fp32: keys from before stay valid)
        **({"label_precision": p} if (p := _label_precision(cfg)) != "fp32" else {}),
    })


def _label_precision(cfg: ExperimentConfig) -> str:
    """``pool.precision`` resolved as the teacher actors will (fp32 for on-demand bundles,
    which hold no logits). For GPU actors, ``auto`` is resolved with this process's GPU."""
    if cfg.train.soft_labels == "on_demand":
        return "fp32"
    from orchestrator.runtime.precision import resolve

    return resolve(cfg.pool.precision, "cuda" if cfg.pool.gpus_per_actor > 0 else "cpu",
                   "pool.precision")


def prepare_bundle(cfg: ExperimentConfig, data: dict[str, TaskData],
                   teachers: dict[str, TeacherRef], log: Callable = print,
                   pool=None) -> BundleResult:
    """Build (or reuse) the pre-encoded training bundle for these tasks, teachers and settings.
    ``pool``: a running pool (or its client) of the one teacher of every task, e.g. the search's;
    else a pool is started per teacher for the labeling, and stopped."""
    t0 = time.time()
    cfg = resolved_embeddings(cfg)
    work_root = Path(cfg.work_root)
    key = bundle_key(cfg, data, teachers)
    final = work_root / "bundles" / key
    if (final / "meta.json").is_file():
        meta = json.loads((final / "meta.json").read_text())
        log(f"[bundle] reusing {final}")
        sizes = meta.get("transfer_sizes", {})
        # every label in a reused bundle was computed once, earlier: count them as reused
        return BundleResult(final, key, True, sizes, {"labels_reused": sum(sizes.values())},
                            meta.get("augment_stats", {}), time.time() - t0)
    from orchestrator.teachers.teacher_model import mask_token as teacher_mask_token

    first_teacher = next(iter(teachers.values()))
    mask_token = teacher_mask_token(first_teacher.path)
    transfer: dict[str, list[Example]] = {}
    aug_stats: dict[str, dict] = {}
    for t, d in data.items():
        transfer[t], aug_stats[t], _ = transfer_examples(cfg, d, work_root, mask_token, log)
    hits = misses = 0
    label_seconds = 0.0
    gate: dict[str, float] = {}
    logits: dict[str, np.ndarray | None] = {t: None for t in transfer}
    on_demand = cfg.train.soft_labels == "on_demand"
    from orchestrator.teachers.teacher_pool import TeacherPool

    by_teacher: dict[str, list[str]] = {}  # one pool per teacher dir, one at a time
    for t in transfer:
        by_teacher.setdefault(teachers[t].path, []).append(t)
    if pool is not None:
        _check_pool_teacher(pool, teachers)
    for path, names in ({} if on_demand else by_teacher).items():
        if pool is None:  # every label cached already: no pool to start
            cached = {t: labels_from_cache(transfer[t], teachers[t], cfg, work_root) for t in names}
            if all(c is not None for c in cached.values()):
                for t, (res, figures) in cached.items():
                    _log_cached(log, t, res)
                    logits[t] = res.logits
                    hits += res.hits
                    label_seconds += res.seconds
                    gate.update(figures)
                continue
        with contextlib.nullcontext(pool) if pool is not None \
                else TeacherPool(path, cfg.pool,
                                 probe_root=cfg.work_root) as running:
            for t in names:
                res = label_examples(transfer[t], teachers[t], cfg, work_root, log, running, t)
                logits[t] = res.logits
                hits += res.hits
                misses += res.misses
                label_seconds += res.seconds
            gate.update(running.fidelity_metrics())

    with atomic_dir(final) as tmp:
        encoding = student_kind(cfg.student.arch).encoding
        if encoding == "words":
            from tasks.vocab import Vocab
            texts = [x for ex in transfer.values() for e in ex for x in (e.text_a, e.text_b) if x]
            vocab = Vocab.build(texts, min_freq=cfg.student.vocab_min_freq,
                                max_size=cfg.student.vocab_max_size, mask_token=mask_token)
            vocab.save(tmp / "vocab.json")
            enc = _word_encoder(vocab, cfg.student.max_length)
            vocab_size = len(vocab)
            embed_dim = cfg.student.embed_dim
            if cfg.student.embeddings:
                if cfg.student.embeddings == TEACHER_EMBEDDINGS:
                    from orchestrator.teachers.teacher_vectors import teacher_word_vectors
                    vectors, found = teacher_word_vectors(cfg.teacher.model, vocab)
                    where = f"the input embeddings of teacher.model={cfg.teacher.model} " \
                            "(mean of word pieces; the rest: its [UNK] row)"
                else:
                    from tasks.embeddings import load_word_vectors
                    vectors, found = load_word_vectors(cfg.student.embeddings, vocab)
                    where = cfg.student.embeddings
                np.save(tmp / "embeddings.npy", vectors.astype(np.float32), allow_pickle=False)
                embed_dim = int(vectors.shape[1])
                log(f"[bundle] embeddings: {found}/{len(vocab)} vocabulary words found in "
                    f"{where}")
        else:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(first_teacher.path)
            tok.save_pretrained(str(tmp / "tokenizer"))
            enc = _wordpiece_encoder(tok, cfg.student.max_length)
            vocab_size, embed_dim = len(tok), None
        tasks_meta = {}
        for t, d in data.items():
            ids_a, ids_b, types = enc(transfer[t])
            label = np.array([np.nan if e.label is None else float(e.label) for e in transfer[t]])
            write_split(tmp / f"train-{t}.parquet", ids_a, ids_b, types, label, logits[t])
            if on_demand:  # the texts the teacher will label while the student trains
                write_texts(tmp / f"texts-{t}.parquet", transfer[t])
            for split, ex in d.dev.items():
                a, b, ty = enc(ex)
                write_split(tmp / f"dev-{t}-{split}.parquet", a, b, ty,
                            np.array([float(e.label) for e in ex]))
            tasks_meta[t] = {"num_outputs": d.task.num_outputs, "pair": d.task.is_pair,
                             "regression": d.task.is_regression, "dev_splits": list(d.dev),
                             "train_size": len(transfer[t]), "spec": _spec_dict(d.task)}
        meta = {"key": key, "tasks": tasks_meta, "encoding": encoding, "vocab_size": vocab_size,
                "embed_dim": embed_dim, "mask_token": mask_token,
                "transfer_sizes": {t: len(x) for t, x in transfer.items()},
                "augment_stats": aug_stats, "soft_labels": cfg.train.soft_labels,
                "teachers": {t: asdict(r) for t, r in teachers.items()}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))  # written last
    label_stats = {} if on_demand else {"label_cache_hits": hits, "label_cache_misses": misses,
                                        "label_seconds": label_seconds, **gate}
    return BundleResult(final, key, False, meta["transfer_sizes"], label_stats, aug_stats,
                        time.time() - t0)


def _check_pool_teacher(pool, teachers: dict[str, TeacherRef]) -> None:
    wrong = sorted(t for t, r in teachers.items()
                   if Path(r.path).resolve() != Path(pool.teacher_path).resolve())
    if wrong:
        raise ValueError(f"the given teacher pool serves {pool.teacher_path}, but tasks "
                         f"{', '.join(wrong)} are labeled by another teacher")


@contextlib.contextmanager
def on_demand_labeler(cfg: ExperimentConfig, teachers: dict[str, TeacherRef], shared=None):
    """With ``train.soft_labels=on_demand``: a running teacher pool for the student's training,
    as a picklable client for the Train workers: ``shared`` (the search's pool) when given, else
    a pool started for the block; otherwise ``None``. One teacher labels every task (the config
    is validated so: :func:`orchestrator.config.one_teacher`)."""
    if cfg.train.soft_labels != "on_demand":
        yield None
        return
    if shared is not None:
        _check_pool_teacher(shared, teachers)
        yield shared
        return
    from orchestrator.teachers.teacher_pool import TeacherPool

    with TeacherPool(next(iter(teachers.values())).path, cfg.pool,
                     probe_root=cfg.work_root) as pool:
        yield pool.client()


def _spec_dict(spec: TaskSpec) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(spec).items()}


def _word_encoder(vocab, max_length: int):
    def enc(examples: list[Example]):
        a = [vocab.encode(e.text_a, max_length) for e in examples]
        b = [vocab.encode(e.text_b, max_length) for e in examples] \
            if examples and examples[0].text_b is not None else None
        return a, b, None
    return enc


def _wordpiece_encoder(tok, max_length: int):
    def enc(examples: list[Example]):
        a = [e.text_a for e in examples]
        b = [e.text_b for e in examples] if examples and examples[0].text_b is not None else None
        out = tok(a, b, truncation=True, max_length=max_length)
        types = out.get("token_type_ids") or [[0] * len(x) for x in out["input_ids"]]
        return out["input_ids"], None, types
    return enc
