"""Checks that must fail before a teacher is refined or a trial starts, not inside a trial.

A search samples configs, so a check runs on every combination the space can produce of the keys
it looks at (choices, and both ends of ranges), with conditional (``when``) parameters honoured:

- the task mixture (``train.mixture``, ``mixture_tau``, ``mixture_weights``) against the
  experiment's tasks: weights negative, all zero, naming a missing or unknown task; tau <= 0;
- every task has a teacher head (a multi-task teacher that lacks one cannot label it);
- a Transformer student that starts from teacher layers (``student.init_from_teacher``) matches
  the teacher: hidden size, attention heads, feed-forward size, no more layers than the teacher
  has (or valid layer indices), and ``student.max_length`` within the teacher's positions.

:func:`preflight` runs them all; ``teachers=None`` checks the student against the base model
(when it is a local directory), before any teacher is fine-tuned.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Iterator

from orchestrator.config import TEACHER_EMBEDDINGS, ConfigError, ExperimentConfig, with_values
from students.registry import names, student_kind

CHECKED_KEYS = ("student.arch", "student.init_from_teacher", "student.tf_layers",
                "student.tf_hidden", "student.tf_heads", "student.tf_ffn", "student.max_length",
                "train.mixture", "train.mixture_tau", "train.mixture_weights")
MAX_COMBINATIONS = 4096


class PreflightError(ConfigError):
    """A configuration (or a config the search space can sample) cannot train."""


# ---------------------------------------------------------------------------------------------
# which configs a search can produce (for the keys checked here)

def candidate_configs(cfg: ExperimentConfig, space=None) -> Iterator[tuple[str, ExperimentConfig]]:
    """``(description, config)`` for each combination of the checked keys the space can sample;
    just ``("", cfg)`` without a space."""
    params = [p for p in (space.params if space is not None else []) if p.key in CHECKED_KEYS]
    if not params:
        yield "", cfg
        return
    seen = 0
    for combo in _combinations(params, 0, {}):
        seen += 1
        if seen > MAX_COMBINATIONS:
            return
        c = with_values(cfg, {k: _cast(_value(cfg, k), v) for k, v in combo.items()})
        yield "sampled " + ", ".join(f"{k}={v}" for k, v in combo.items()), c


def _combinations(params, i: int, chosen: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Depth-first over the params in file order. A ``when`` on a key sampled earlier decides
    whether the param is sampled; a ``when`` on any other key may go either way: both branches."""
    if i == len(params):
        yield dict(chosen)
        return
    p = params[i]
    decided = [chosen[k] in vals for k, vals in p.when.items() if k in chosen]
    if not all(decided):  # its condition is false here: the param keeps its fixed value
        yield from _combinations(params, i + 1, chosen)
        return
    for v in (p.values if p.type == "choice" else [p.low, p.high]):
        chosen[p.key] = int(v) if p.type == "int" else v
        yield from _combinations(params, i + 1, chosen)
    del chosen[p.key]
    if len(decided) < len(p.when):  # depends on keys not enumerated here: may be unsampled
        yield from _combinations(params, i + 1, chosen)


def _value(cfg: ExperimentConfig, dotted: str) -> Any:
    section, name = dotted.split(".")
    return getattr(getattr(cfg, section), name)


def _cast(current: Any, value: Any) -> Any:
    if isinstance(current, bool) or value is None:
        return value
    if isinstance(current, int) and isinstance(value, float) and value == int(value):
        return int(value)
    if isinstance(current, float) and isinstance(value, (int, float)):
        return float(value)
    return value


# ---------------------------------------------------------------------------------------------
# the checks

def check_mixture(cfg: ExperimentConfig, sizes: dict[str, int]) -> None:
    """The mixture the trial's loop will build, built now from the tasks' training sizes."""
    from orchestrator.training.mixture import MixtureError, mixture_weights

    t = cfg.train
    if len(sizes) < 2:
        return  # a single task draws itself, whatever the mixture says
    try:
        mixture_weights(sizes, t.mixture, t.mixture_tau, t.mixture_weights)
    except MixtureError as e:
        raise PreflightError(f"train.mixture={t.mixture}: {e}") from None


def check_teacher_heads(teachers: dict) -> None:
    """Every task's teacher can label it: a multi-task teacher must have the task's head."""
    from orchestrator.teachers.teacher_model import HEADS_FILE

    for task, ref in teachers.items():
        f = Path(ref.path) / HEADS_FILE
        if not f.is_file():
            continue
        info = json.loads(f.read_text())
        heads = info.get("heads", {})
        if info.get("multitask") and ref.head not in heads:
            raise PreflightError(
                f"task {task}: teacher {ref.path} has no head {ref.head!r} (heads: "
                f"{', '.join(sorted(heads))}); refine a multi-task teacher that includes it "
                "(teacher.multitask=true with this task in `tasks`)")


def teacher_shape(path: str | Path) -> dict | None:
    """The encoder sizes of a teacher or base model dir (its config.json); None when unknown."""
    f = Path(path) / "config.json"
    if not f.is_file():
        return None
    c = json.loads(f.read_text())
    keys = ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers",
            "max_position_embeddings")
    if not all(k in c for k in keys[:4]):
        return None
    return {k: c.get(k) for k in keys}


def check_student_init(cfg: ExperimentConfig, shape: dict, teacher: str) -> None:
    """A Transformer student seeded from teacher layers must have the teacher's sizes."""
    from students.transformer import pick_layers

    s = cfg.student
    if not student_kind(s.arch).from_teacher_layers or s.init_from_teacher == "none":
        return
    problems = []
    for ours, theirs, what in (("tf_hidden", "hidden_size", "hidden size"),
                               ("tf_heads", "num_attention_heads", "attention heads"),
                               ("tf_ffn", "intermediate_size", "feed-forward size")):
        if getattr(s, ours) != shape[theirs]:
            problems.append(f"student.{ours}={getattr(s, ours)} but the teacher's {what} is "
                            f"{shape[theirs]}")
    try:
        pick_layers(s.tf_layers, int(shape["num_hidden_layers"]), s.init_from_teacher)
    except ValueError as e:
        problems.append(f"student.tf_layers={s.tf_layers}, "
                        f"init_from_teacher={s.init_from_teacher!r}: {e}")
    pos = shape.get("max_position_embeddings")
    if pos and s.max_length > pos:
        problems.append(f"student.max_length={s.max_length} exceeds the teacher's "
                        f"{pos} positions")
    if problems:
        raise PreflightError(
            f"student.init_from_teacher={s.init_from_teacher!r} copies layers of teacher "
            f"{teacher}, which does not fit: " + "; ".join(problems) +
            ". Match the student's tf_* sizes to the teacher or set student.init_from_teacher=none")


def preflight(cfg: ExperimentConfig, space=None, data: dict | None = None,
              teachers: dict | None = None) -> None:
    """Run every check on ``cfg`` and on each config the space can sample; raise
    :class:`PreflightError` naming the sampled values that fail."""
    sizes = {t: len(d.train) for t, d in (data or {}).items()}
    empty = [t for t, n in sizes.items() if n == 0]
    if empty:
        raise PreflightError(f"task(s) {', '.join(empty)} have no training examples")
    if teachers:
        missing = sorted(set(sizes) - set(teachers))
        if missing:
            raise PreflightError(f"task(s) {', '.join(missing)} have no teacher")
        check_teacher_heads(teachers)
        first = next(iter(teachers.values())).path
        shape, teacher_name = teacher_shape(first), first
    else:
        shape, teacher_name = teacher_shape(cfg.teacher.model), cfg.teacher.model
    for where, c in candidate_configs(cfg, space):
        try:
            if sizes:
                check_mixture(c, sizes)
            if shape is not None:
                check_student_init(c, shape, teacher_name)
        except PreflightError as e:
            raise PreflightError(f"{e} [{where}]" if where else str(e)) from None


# ---------------------------------------------------------------------------------------------
# the inputs: before any work and before Ray starts (none of these needs a cluster)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")


def check_inputs(cfg: ExperimentConfig, space=None, *, teacher: bool = True,
                 storage: bool = True, log: Callable[[str], Any] = print) -> None:
    """Every input a run reads, checked cheaply before it does any work: the task names and
    data files (own files read whole, a GLUE folder's first rows), the teacher (config readable,
    head size), the embeddings file (read whole), the NLTK data when augmentation is on, the
    search space, and that the work root and the tracking store are writable. Logs how each
    task's labels will be read (:func:`check_tasks`). Raises :class:`PreflightError`, one
    message naming the file, line or key and what to do."""
    specs = check_tasks(cfg, log)
    if teacher:
        check_teacher_model(cfg, specs)
    check_embeddings(cfg, space)
    check_augment_data(cfg, space)
    if space is not None or cfg.tasks:
        preflight(cfg, space)  # the space's combinations: mixture, student vs base model
    if storage:
        check_writable(cfg)


def check_tasks(cfg: ExperimentConfig, log: Callable[[str], Any] = print) -> dict:
    """Each task's spec (its name known, own data's labels read) and the rows of its files
    (:func:`tasks.loaders.check_task_data`). Logs each task as it will be read, classification
    with its classes in order or regression, before its rows are checked, so that a user sees
    what was inferred from the labels before any work."""
    from orchestrator.stages.pipeline import get_task_for
    from tasks.data import DataError
    from tasks.loaders import TaskSource, check_task_data, describe_task
    from tasks.registry import UnknownTaskError

    specs = {}
    for name in cfg.tasks or [cfg.data.task]:
        key = "tasks" if cfg.tasks else "data.task"
        try:
            spec = get_task_for(cfg, name)
        except UnknownTaskError as e:
            raise PreflightError(f"{key}: {e}") from None
        except DataError as e:
            raise PreflightError(f"task {name}: {e}") from None
        log(f"[data] {describe_task(spec, TaskSource.of(cfg.data, name))}")
        try:
            check_task_data(dataclasses.replace(cfg.data, task=spec.name), spec)
        except DataError as e:
            raise PreflightError(f"task {spec.name}: {e}") from None
        specs[spec.name] = spec
    return specs


def check_teacher_model(cfg: ExperimentConfig, specs: dict) -> None:
    """``teacher.model``: a local Hugging Face directory (config.json readable, weights there) or
    a hub name whose config loads; a classification head already on it must have each task's
    number of outputs (fine-tuning cannot reshape it)."""
    name = cfg.teacher.model
    if name.startswith("random:"):
        return
    p = Path(name).expanduser()
    if name.startswith((".", "/", "~")) or p.exists():
        if not p.is_dir():
            raise PreflightError(
                f"teacher.model={name}: no such directory; pass a Hugging Face model directory "
                "(config.json, weights, tokenizer files) or a hub name such as bert-base-uncased")
        cfile = p / "config.json"
        if not cfile.is_file():
            raise PreflightError(f"teacher.model={name}: {cfile} is missing: not a Hugging Face "
                                 "model directory (save one with model.save_pretrained(DIR))")
        try:
            conf = json.loads(cfile.read_text())
        except (OSError, ValueError) as e:
            raise PreflightError(f"{cfile}: not readable JSON ({e}); re-save the model with "
                                 "save_pretrained or fix the file") from None
        if not isinstance(conf, dict) or "model_type" not in conf:
            raise PreflightError(f"{cfile}: no 'model_type' key: not a transformers model "
                                 "config; re-save the model with save_pretrained")
        if not any((p / f).is_file() for f in WEIGHT_FILES):
            raise PreflightError(f"teacher.model={name}: no weights in {p} (expected "
                                 f"{' or '.join(WEIGHT_FILES[:2])})")
        where = str(cfile)
    else:
        try:
            from transformers import AutoConfig

            conf = AutoConfig.from_pretrained(name).to_dict()
        except Exception as e:  # noqa: BLE001 - hub, cache and parse errors all mean "unusable"
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise PreflightError(
                f"teacher.model={name}: cannot read its config from the Hugging Face hub or the "
                f"local cache ({type(e).__name__}: {first}). Offline? Point teacher.model at a "
                "local model directory (or pass --assets DIR)") from None
        where = f"hub model {name}"
    archs = conf.get("architectures") or []
    labels = conf.get("id2label")
    if isinstance(labels, dict) and any(str(a).endswith("ForSequenceClassification")
                                        for a in archs):
        for task, spec in specs.items():
            if len(labels) != spec.num_outputs:
                raise PreflightError(
                    f"teacher.model={name}: {where} (key id2label) has a classification head of "
                    f"{len(labels)} output(s) but task {task} needs {spec.num_outputs}; start "
                    "from the base encoder (a model without that head) or a teacher trained "
                    "for this task's labels")


def check_embeddings(cfg: ExperimentConfig, space=None) -> None:
    """``student.embeddings``: the file exists and its first lines (the whole file when small)
    have one vector size; for ``teacher`` (here or among the space's choices), the base model
    can give its input embeddings (:func:`check_teacher_embeddings`); skipped when no
    word-level student can be trained."""
    from orchestrator.config import resolve_embeddings
    from tasks.data import DataError
    from tasks.embeddings import check_vector_file

    archs = {cfg.student.arch}
    values = {cfg.student.embeddings}
    for p in (space.params if space is not None else []):
        if p.key == "student.arch" and p.type == "choice":
            archs |= set(p.values)
        if p.key == "student.embeddings" and p.type == "choice":
            values |= {v for v in p.values if isinstance(v, str)}
    if not any(a not in names() or student_kind(a).words for a in archs):
        return
    if TEACHER_EMBEDDINGS in values:
        check_teacher_embeddings(cfg)
    if not cfg.student.embeddings or cfg.student.embeddings == TEACHER_EMBEDDINGS:
        return
    try:
        path = resolve_embeddings(cfg.student.embeddings)
        check_vector_file(path)
    except (DataError, ConfigError) as e:
        raise PreflightError(f"student.embeddings: {e}") from None


def check_teacher_embeddings(cfg: ExperimentConfig) -> None:
    """``student.embeddings=teacher``: ``teacher.model`` is a pre-trained model (not
    ``random:*``) and, when a local directory, holds a config, weights and tokenizer files (a
    hub name is checked by :func:`check_teacher_model`)."""
    from orchestrator.teachers.teacher_vectors import TOKENIZER_FILES

    name = cfg.teacher.model
    what = ("student.embeddings=teacher reads the input embeddings and the tokenizer of "
            "teacher.model")
    if name.startswith("random:"):
        raise PreflightError(f"{what}, but teacher.model={name} is a random BERT built afresh "
                             "for each task: point teacher.model at a Hugging Face model dir "
                             "(or hub name), or set student.embeddings to null or a GloVe file")
    p = Path(name).expanduser()
    if not (name.startswith((".", "/", "~")) or p.exists()):
        return
    if not p.is_dir() or not (p / "config.json").is_file():
        raise PreflightError(f"{what}={name}: no Hugging Face model directory there "
                             "(config.json missing); pass a model dir or hub name, or set "
                             "student.embeddings to null or a GloVe file")
    if not any((p / f).is_file() for f in WEIGHT_FILES):
        raise PreflightError(f"{what}={name}: no weights in {p} (expected "
                             f"{' or '.join(WEIGHT_FILES[:2])})")
    if not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise PreflightError(f"{what}={name}: no tokenizer files in {p} (expected one of "
                             f"{', '.join(TOKENIZER_FILES)}); save the tokenizer there with "
                             "tokenizer.save_pretrained(DIR)")


def check_augment_data(cfg: ExperimentConfig, space=None) -> None:
    """The NLTK data the augmentation's POS tagger reads, when augmentation may run."""
    on = cfg.augment.enabled or any(p.key == "augment.enabled" and True in (p.values or [])
                                    for p in (space.params if space is not None else []))
    if not on:
        return
    from tasks.augment import NltkDataMissingError, check_nltk_data

    try:
        check_nltk_data(cfg.augment.nltk_data)
    except NltkDataMissingError as e:
        raise PreflightError(f"augment.enabled=true (augment.nltk_data="
                             f"{cfg.augment.nltk_data}): {e}") from None


def check_writable(cfg: ExperimentConfig) -> None:
    """The work root (teachers, caches, bundles) and a local tracking store can be written."""
    import os

    from orchestrator.runtime.ray_runtime import StorageError, check_storage
    from orchestrator.runtime.redact import redact
    from orchestrator.runtime.tracking import TrackingError, check_reachable, resolve_uri

    uri = resolve_uri(cfg.tracking.uri)  # the store first: a failed check leaves nothing behind
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        target = db if db.exists() else db.parent
        if not target.exists() or not os.access(target, os.W_OK):
            why = "" if target.exists() else " (no such directory)"
            raise PreflightError(
                f"tracking store {redact(uri)}: {target} is not writable{why}; pass --tracking-uri "
                "sqlite:///<writable path>/mlflow.db or set $MLFLOW_TRACKING_URI")
    else:
        try:
            check_reachable(uri)
        except TrackingError as e:
            raise PreflightError(str(e)) from None
    try:
        check_storage(str(cfg.work_root), "work_root")
    except StorageError as e:
        raise PreflightError(f"{e} (--work-root / $DISTILLRAY_WORK_ROOT)") from None
