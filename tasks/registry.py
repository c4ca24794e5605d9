"""Task registry: what each GLUE task looks like (inputs, labels, metrics, dev splits).

``get_task("SST-2")`` returns the built-in spec; ``custom_task(...)`` describes the user's own data.
Label orders follow the Hugging Face ``nyu-mll/glue`` class labels, so class index ``i`` means the
same thing whether the data came from the GLUE TSV files or from the hub.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

CLASSIFICATION_METRICS = ("accuracy", "f1", "matthews")
REGRESSION_METRICS = ("pearson", "spearman")
KNOWN_METRICS = CLASSIFICATION_METRICS + REGRESSION_METRICS


class UnknownTaskError(ValueError):
    """A task name that is neither a GLUE task nor one of its aliases."""


@dataclass(frozen=True)
class TaskSpec:
    """One task. ``label_names`` is None for regression; class ``i`` is ``label_names[i]``."""

    name: str
    glue_dir: str | None  # folder under the GLUE root, e.g. "SST-2"; None for custom tasks
    hub_config: str | None  # config of nyu-mll/glue, e.g. "sst2"; None for custom tasks
    is_pair: bool
    label_names: tuple[str, ...] | None
    metrics: tuple[str, ...]
    main_metric: str
    dev_splits: tuple[str, ...] = ("dev",)
    hub_text_columns: tuple[str, ...] = ()  # text columns of the hub dataset, in order
    score_range: tuple[float, float] | None = None  # regression targets, e.g. (0.0, 5.0)

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in KNOWN_METRICS]
        if unknown:
            raise ValueError(f"task {self.name!r}: unknown metric {unknown[0]!r}; "
                             f"known: {', '.join(KNOWN_METRICS)}")
        if self.main_metric not in self.metrics:
            raise ValueError(f"task {self.name!r}: main_metric {self.main_metric!r} "
                             f"is not one of its metrics {self.metrics}")
        if self.label_names is not None and len(self.label_names) < 2:
            raise ValueError(f"task {self.name!r}: a classification task needs at least 2 labels")
        if self.label_names is not None and len(set(self.label_names)) != len(self.label_names):
            raise ValueError(f"task {self.name!r}: label names repeat: {self.label_names}")
        if not self.dev_splits:
            raise ValueError(f"task {self.name!r}: needs at least one dev split")

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_outputs(self) -> int:
        """Width of the model head: number of classes, or 1 for regression."""
        return 1 if self.label_names is None else len(self.label_names)


def _glue(name: str, glue_dir: str, labels: tuple[str, ...] | None, metrics: tuple[str, ...],
          main: str, columns: tuple[str, ...], dev_splits: tuple[str, ...] = ("dev",),
          score_range: tuple[float, float] | None = None) -> TaskSpec:
    return TaskSpec(name=name, glue_dir=glue_dir, hub_config=name, is_pair=len(columns) == 2,
                    label_names=labels, metrics=metrics, main_metric=main, dev_splits=dev_splits,
                    hub_text_columns=columns, score_range=score_range)


GLUE_TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    _glue("cola", "CoLA", ("unacceptable", "acceptable"), ("matthews",), "matthews", ("sentence",)),
    _glue("sst2", "SST-2", ("negative", "positive"), ("accuracy",), "accuracy", ("sentence",)),
    _glue("mrpc", "MRPC", ("not_equivalent", "equivalent"), ("f1", "accuracy"), "f1",
          ("sentence1", "sentence2")),
    _glue("stsb", "STS-B", None, ("pearson", "spearman"), "pearson", ("sentence1", "sentence2"),
          score_range=(0.0, 5.0)),
    _glue("qqp", "QQP", ("not_duplicate", "duplicate"), ("f1", "accuracy"), "f1",
          ("question1", "question2")),
    _glue("mnli", "MNLI", ("entailment", "neutral", "contradiction"), ("accuracy",), "accuracy",
          ("premise", "hypothesis"), dev_splits=("dev_matched", "dev_mismatched")),
    _glue("qnli", "QNLI", ("entailment", "not_entailment"), ("accuracy",), "accuracy",
          ("question", "sentence")),
    _glue("rte", "RTE", ("entailment", "not_entailment"), ("accuracy",), "accuracy",
          ("sentence1", "sentence2")),
    _glue("wnli", "WNLI", ("not_entailment", "entailment"), ("accuracy",), "accuracy",
          ("sentence1", "sentence2")),
)}

# normalized alias -> task name (normalized: lower-case, only letters and digits)
_ALIASES: dict[str, str] = {
    "sst": "sst2", "stsbenchmark": "stsb", "sts": "stsb",
    "mnlim": "mnli", "mnlimm": "mnli", "mnlimatched": "mnli", "mnlimismatched": "mnli",
    "multinli": "mnli",
}


def _normalize(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def task_names() -> list[str]:
    """The built-in task names, in GLUE order."""
    return list(GLUE_TASKS)


def resolve_task_name(name: str) -> str | None:
    """Canonical GLUE name for ``name`` or one of its aliases ("SST-2", "mnli-mm"); else None."""
    key = _normalize(name)
    if key in GLUE_TASKS:
        return key
    return _ALIASES.get(key)


def get_task(name: str) -> TaskSpec:
    """The built-in spec for a GLUE task name or alias (case-insensitive)."""
    canonical = resolve_task_name(name)
    if canonical is None:
        raise UnknownTaskError(
            f"unknown task {name!r}; known tasks: {', '.join(GLUE_TASKS)} "
            "(aliases such as 'SST-2', 'STS-B', 'mnli-mm' work too). For your own data, use a "
            "custom task: data.source=custom with data.train_file / data.dev_file "
            "(tasks.registry.custom_task in code).")
    return GLUE_TASKS[canonical]


def default_metrics(label_names: tuple[str, ...] | None) -> tuple[tuple[str, ...], str]:
    """(metrics, main metric) for a custom task with these labels."""
    if label_names is None:
        return REGRESSION_METRICS, "pearson"
    if len(label_names) == 2:
        return ("accuracy", "f1"), "accuracy"
    return ("accuracy",), "accuracy"


def custom_task(name: str, is_pair: bool, label_names: list[str] | tuple[str, ...] | None,
                metrics: tuple[str, ...] | None = None, main_metric: str | None = None,
                dev_splits: tuple[str, ...] = ("dev",)) -> TaskSpec:
    """A spec for the user's own data. ``label_names=None`` means regression.

    Default metrics: accuracy + f1 (positive class = index 1) for two classes, accuracy for more,
    pearson + spearman for regression.
    """
    if not name or not name.strip():
        raise ValueError("a custom task needs a non-empty name")
    labels = None if label_names is None else tuple(str(x) for x in label_names)
    default, default_main = default_metrics(labels)
    chosen = tuple(metrics) if metrics else default
    main = main_metric or (default_main if default_main in chosen else chosen[0])
    return TaskSpec(name=name.strip(), glue_dir=None, hub_config=None, is_pair=is_pair,
                    label_names=labels, metrics=chosen, main_metric=main,
                    dev_splits=tuple(dev_splits))
