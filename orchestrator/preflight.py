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

import copy
import json
from pathlib import Path
from typing import Any, Iterator

from orchestrator.config import ConfigError, ExperimentConfig

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
        c = copy.deepcopy(cfg)
        for k, v in combo.items():
            section, name = k.split(".")
            setattr(getattr(c, section), name, _cast(getattr(getattr(c, section), name), v))
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
    from orchestrator.mixture import MixtureError, mixture_weights

    t = cfg.train
    if len(sizes) < 2:
        return  # a single task draws itself, whatever the mixture says
    try:
        mixture_weights(sizes, t.mixture, t.mixture_tau, t.mixture_weights)
    except MixtureError as e:
        raise PreflightError(f"train.mixture={t.mixture}: {e}") from None


def check_teacher_heads(teachers: dict) -> None:
    """Every task's teacher can label it: a multi-task teacher must have the task's head."""
    from orchestrator.teacher_model import HEADS_FILE

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
    if s.arch != "transformer" or s.init_from_teacher == "none":
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
