"""The rows, budgets and cell record; the configuration: a row's config, a cell's key."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from orchestrator.app.run import parse_sets, resolve_overrides
from orchestrator.config import (MULTITASK_ENTRY, ConfigError, ExperimentConfig, parse_override,
                                 with_overrides, with_values)
from orchestrator.runtime.keys import content_key

REPORT_VERSION = 2  # 2: students train in report-train runs, a cell run per (row, task)
KIND_PARENT, KIND_CELL, KIND_TRAIN = "report", "report-cell", "report-train"
TAG_REPORT, TAG_ROW, TAG_TASK = "distillray.report", "distillray.row", "distillray.task"
TAG_CONFIG = "distillray.config_key"
BERT_BASE = "bert_base"


@dataclass(frozen=True)
class Row:
    id: str
    num: str
    label: str
    kind: str  # teacher | single | mkd
    sets: dict[str, Any] = field(default_factory=dict)
    baselines: tuple[str, ...] = ()
    lr_scale: float = 1.0
    tuned: bool = False  # picks train.lr from the budget's grid on dev (the BiLSTM rows)


ROWS: tuple[Row, ...] = (
    Row("teacher", "1a", "Teacher, fine-tuned per task", "teacher", {"teacher.multitask": False}),
    Row("teacher_mkd", "1b", "Teacher, multi-task (mixture only)", "teacher",
        {"teacher.multitask": True, "teacher.refine_epochs": 0.0}, ("teacher",)),
    # MT-DNN / MKD: the multi-task teacher, then a short fine-tuning per task from its weights
    Row("teacher_mkd_refined", "1c", "Teacher, multi-task then refined per task", "teacher",
        {"teacher.multitask": True}, ("teacher",)),
    Row("bilstm_gold", "2", "BiLSTM, gold labels only (no teacher)", "single",
        {"student.arch": "bilstm", "train.loss": "ce", "augment.enabled": False,
         "teacher.multitask": False}, tuned=True),
    Row("bilstm_kd", "3", "BiLSTM distilled, no augmentation", "single",
        {"student.arch": "bilstm", "train.loss": "mse", "augment.enabled": False,
         "teacher.multitask": False}, tuned=True),
    Row("bilstm_soft", "4", "BiLSTM_SOFT (distilled, Tang augmentation)", "single",
        {"student.arch": "bilstm", "train.loss": "mse", "augment.enabled": True,
         "teacher.multitask": False}, ("bilstm_gold", "bilstm_kd"), tuned=True),
    Row("mkd_bcn", "5a", "MKD BCN (joint, refined multi-task teacher)", "mkd",
        {"student.arch": "bcn", "train.loss": "mse", "augment.enabled": False,
         "teacher.multitask": True}, ("bilstm_kd", "bcn_kd"), tuned=True),
    Row("mkd_transformer", "5b", "MKD Transformer (joint, refined multi-task teacher)", "mkd",
        {"student.arch": "transformer", "train.loss": "mse", "augment.enabled": False,
         "teacher.multitask": True}, ("bilstm_kd", "transformer_kd"), lr_scale=0.1, tuned=True),
    # ablation: joint students from the single-task teachers' logits, which separates "joint
    # training helps" from "the multi-task teacher is weaker"
    Row("mkd_bcn_st", "5c", "MKD BCN (joint, single-task teachers)", "mkd",
        {"student.arch": "bcn", "train.loss": "mse", "augment.enabled": False,
         "teacher.multitask": False}, ("bcn_kd",), tuned=True),
    Row("mkd_transformer_st", "5d", "MKD Transformer (joint, single-task teachers)", "mkd",
        {"student.arch": "transformer", "train.loss": "mse", "augment.enabled": False,
         "teacher.multitask": False}, ("transformer_kd",), lr_scale=0.1, tuned=True),
    # the MKD students distilled one task at a time: what joint distillation has to beat
    Row("bcn_kd", "6a", "BCN distilled per task (single-task teacher)", "single",
        {"student.arch": "bcn", "train.loss": "mse", "augment.enabled": False,
         "teacher.multitask": False}, tuned=True),
    Row("transformer_kd", "6b", "Transformer distilled per task (from teacher layers)", "single",
        {"student.arch": "transformer", "train.loss": "mse", "augment.enabled": False,
         "teacher.multitask": False}, lr_scale=0.1, tuned=True),
)
ROW_IDS = tuple(r.id for r in ROWS)

# --budget: caps for "small" (a value already below a cap stays), fixed values for "full"
BUDGET_CAPS = {"small": {"data.max_train_examples": 3000, "data.max_dev_examples": 500,
                         "teacher.epochs": 3.0, "train.epochs": 3, "augment.n_iter": 10,
                         "augment.max_examples": 10000}}
# full: all the data; teachers keep their best epoch on dev, read wordpieces up to 128 (RTE and
# MRPC pairs run past 64) and train at the preset's lr 5e-5 for 3 epochs on SST-2; the small
# sets train 10 epochs, each at the lr of {5e-5, 1e-4} that scored better on dev (1e-4: STS-B
# only; MRPC tied, RTE and CoLA lost 1.4 and 4.3 points at 1e-4); the multi-task teacher draws
# each step's task in proportion to size ** 0.5 for 3 epochs of the mixture, so SST-2 gets about
# 2 passes and the small sets 5 to 10, near what their own teachers needed (drawn in proportion
# to size, every task gets the same number of passes: 2 epochs left CoLA at MCC 13.8); Tang's
# n_iter (20 single, 10 pairs)
BUDGET_FULL = {"data.max_train_examples": None, "data.max_dev_examples": None,
               "teacher.epochs": 3.0, "teacher.max_train_examples": None,
               "teacher.max_length": 128, "teacher.keep_best_epoch": True,
               "teacher.per_task": {"mrpc": {"epochs": 10}, "rte": {"epochs": 10},
                                    "cola": {"epochs": 10}, "stsb": {"epochs": 10, "lr": 1e-4},
                                    MULTITASK_ENTRY: {"epochs": 3, "mixture_tau": 0.5}},
               "teacher.refine_epochs": 3.0,
               "train.epochs": 10, "train.patience": 2, "augment.n_iter": None,
               "augment.max_examples": None}
BUDGETS = ("small", "full")
# the tuned rows' train.lr grid (times a row's lr_scale: 0.1 for the Transformers), the same for
# every student row: a single-task cell keeps the value with the best dev score on its task, a
# joint (MKD) student the one with the best mean over its tasks; epochs by patience
LR_GRID = {"small": (), "full": (5e-4, 1e-3, 2e-3)}
# the grid's rung: every learning rate trains this many reports (epochs), the best dev score so
# far picks one, and only that one trains on (with patience); the others stop there. It costs
# one epoch per losing point instead of a whole training: what makes the three BiLSTM rows'
# grids affordable on the 20x Tang-augmented SST-2 transfer set
GRID_RUNG = {"small": None, "full": 1}
# settings of the single-task student cells of one task per budget (``--row-set`` wins): on
# CoLA every BiLSTM still predicts the majority class after 1 to 3 epochs (MCC 0 at every
# learning rate of the grid, so neither the rung nor patience can tell them apart) and leaves it
# at epoch 3 to 5; patience starts counting, and the grid's rung is taken, at epoch 5
BUDGET_TASK_SETS = {"small": {}, "full": {"cola": {"train.min_epochs": 5}}}
# settings of single rows per budget (``--row-set`` wins): MKD's second stage, each task
# fine-tuning its own copy of the jointly distilled student
BUDGET_ROW_SETS = {"small": {}, "full": {r: {"train.finetune_epochs": 2} for r in (
    "mkd_bcn", "mkd_transformer", "mkd_bcn_st", "mkd_transformer_st")}}

METRIC_SHORT = {"accuracy": "acc", "f1": "F1", "matthews": "MCC", "pearson": "Pearson",
                "spearman": "Spearman"}


class ReportError(ConfigError):
    """A report that cannot be set up (unknown rows, budgets, tasks)."""


@dataclass
class Cell:
    row: str
    task: str
    metrics: dict[str, float]  # the task's dev metrics and "score"
    run_id: str | None
    status: str  # trained | reused | failed
    config_key: str = ""
    train_run_id: str | None = None  # the run holding the student (MKD: the joint run)
    transfer_size: float | None = None
    error: str | None = None
    flag: str | None = None
    tuning: dict[str, Any] = field(default_factory=dict)  # how the row picked its student
    train_seconds: dict[str, float] = field(default_factory=dict)  # compute s per train run
    seeds: list[int] = field(default_factory=list)  # train.seed of each run behind the cell
    seed_scores: list[float] = field(default_factory=list)  # each seed's score (same order)


def teacher_source(cfg: ExperimentConfig) -> str:
    """Which teachers label a row: ``single`` (one fine-tuned per task), ``multi`` (the
    multi-task teacher's heads) or ``refined`` (its copies refined per task)."""
    if not cfg.teacher.multitask:
        return "single"
    return "refined" if cfg.teacher.refine_epochs > 0 else "multi"


def combine_seeds(cells: list[Cell], seeds: list[int]) -> Cell:
    """One cell from the same (row, task) trained under each of ``seeds``: every metric the
    mean over the seeds, each seed's score kept (``seed_scores``), the first seed's runs named
    (its student is the one measured); a failed seed fails the cell."""
    first = cells[0]
    failed = next((c for c in cells if c.status == "failed"), None)
    if failed is not None:
        return replace(failed, seeds=list(seeds))
    keys = set.intersection(*(set(c.metrics) for c in cells))
    metrics = {k: float(np.mean([c.metrics[k] for c in cells])) for k in sorted(keys)}
    status = "trained" if any(c.status == "trained" for c in cells) else "reused"
    seconds = {k: v for c in cells for k, v in c.train_seconds.items()}
    return replace(first, metrics=metrics, status=status, train_seconds=seconds,
                   seeds=list(seeds), seed_scores=[float(c.metrics["score"]) for c in cells])


def score_std(cell: Cell) -> float | None:
    """Sample standard deviation of a cell's seed scores; None under two seeds."""
    return float(np.std(cell.seed_scores, ddof=1)) if len(cell.seed_scores) > 1 else None


def resolve_report(preset: str = "report", budget: str = "small", tasks: list[str] | None = None,
                   sets: list[str] | None = None, assets: str | None = None,
                   extra: dict[str, Any] | None = None) -> ExperimentConfig:
    """The report's base config: preset, then the budget, then ``--set`` (which wins)."""
    if budget not in BUDGETS:
        raise ReportError(f"--budget {budget!r}: choose {' or '.join(BUDGETS)}")
    given = parse_sets([f"tasks=[{','.join(tasks)}]"] if tasks else []) | parse_sets(sets)
    _, cfg, _ = resolve_overrides(preset, {**(extra or {}), **given}, assets)
    # the budget's values go under the --set ones (a key given there keeps its value) and over
    # the rest; none of them is one the local assets set
    return with_overrides(cfg, {k: v for k, v in budget_overrides(cfg, budget).items()
                                if k not in given})


def budget_overrides(cfg: ExperimentConfig, budget: str) -> dict[str, Any]:
    if budget == "full":
        return dict(BUDGET_FULL)
    out = {}
    for key, cap in BUDGET_CAPS[budget].items():
        section, name = key.split(".")
        cur = getattr(getattr(cfg, section), name)
        out[key] = cap if cur is None else min(cur, cap)
    return out


def describe_budget(budget: str, cfg: ExperimentConfig, data) -> str:
    sizes = ", ".join(f"{t} {len(d.train)}/{len(next(iter(d.dev.values())))}"
                      for t, d in data.items())
    a = cfg.augment
    caps = (f" (caps: <= {BUDGET_CAPS['small']['data.max_train_examples']} train / "
            f"<= {BUDGET_CAPS['small']['data.max_dev_examples']} dev examples per task, teacher "
            f"<= {BUDGET_CAPS['small']['teacher.epochs']:g} epochs, students <= "
            f"{BUDGET_CAPS['small']['train.epochs']} epochs, augmentation <= "
            f"{BUDGET_CAPS['small']['augment.n_iter']} rounds and <= "
            f"{BUDGET_CAPS['small']['augment.max_examples']} examples per task)"
            if budget == "small" else " (full data)")
    tt = cfg.teacher
    per_task = "; ".join(f"{t}: " + ", ".join(f"{k} {v:g}" if isinstance(v, (int, float))
                                              else f"{k} {v}" for k, v in over.items())
                         for t, over in (tt.per_task or {}).items()
                         if t in data or (t == MULTITASK_ENTRY and len(data) > 1))
    return (f"budget {budget}{caps}. Train/dev examples per task: {sizes}. Teacher: "
            f"{tt.model.rstrip('/').split('/')[-1]}, {tt.epochs:g} epochs, lr {tt.lr:g}, "
            f"max_length {tt.max_length}" + (f" ({per_task})" if per_task else "")
            + f". Students: {cfg.train.epochs} epochs, batch "
            f"{cfg.train.batch_size}, lr {cfg.train.lr:g} (Transformer x0.1), seed "
            f"{cfg.train.seed}. Augmentation (row 4): n_iter "
            f"{a.n_iter if a.n_iter is not None else 'Tang default (20 single / 10 pairs)'}, "
            f"cap {a.max_examples if a.max_examples is not None else 'none'} per task.")


def parse_row_sets(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``ROW:KEY=VALUE`` -> {row: {key: value}} (a setting for one row only)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        if ":" not in item:
            raise ReportError(f"--row-set {item!r} must look like ROW:section.key=value")
        row, kv = item.split(":", 1)
        if row not in ROW_IDS:
            raise ReportError(f"--row-set {item!r}: unknown row {row!r}; rows: {', '.join(ROW_IDS)}")
        k, v = parse_override(kv)
        out.setdefault(row, {})[k] = v
    return out


def select_rows(rows: list[str] | None) -> list[Row]:
    if not rows:
        return list(ROWS)
    unknown = [r for r in rows if r not in ROW_IDS]
    if unknown:
        raise ReportError(f"unknown row(s) {', '.join(unknown)}; rows: {', '.join(ROW_IDS)}")
    return [r for r in ROWS if r.id in rows]


def row_config(base: ExperimentConfig, row: Row, row_sets: dict[str, dict[str, Any]],
               tasks: list[str]) -> ExperimentConfig:
    """The row's config: the base, the row's own settings, then ``--row-set`` for it."""
    over = dict(row.sets)
    if row.lr_scale != 1.0:
        over["train.lr"] = base.train.lr * row.lr_scale
    over.update(row_sets.get(row.id, {}))
    return with_values(with_overrides(base, over), {"tasks": list(tasks), "data.task": tasks[0]})


def task_config(cfg: ExperimentConfig, row_id: str, task: str, budget: str,
                row_sets: dict[str, dict[str, Any]]) -> ExperimentConfig:
    """A single-task row's config for one task: the row's, on that task alone, with the budget's
    settings for that task (:data:`BUDGET_TASK_SETS`) under the row's ``--row-set`` values. A
    ``train.min_epochs`` above the row's ``train.epochs`` is capped there."""
    over = {k: v for k, v in BUDGET_TASK_SETS[budget].get(task, {}).items()
            if k not in row_sets.get(row_id, {})}
    if "train.min_epochs" in over:
        over["train.min_epochs"] = min(over["train.min_epochs"], cfg.train.epochs)
    return with_overrides(with_values(cfg, {"tasks": [task], "data.task": task}), over)


def cell_key(row: Row, cfg: ExperimentConfig, data, teachers) -> str:
    """What a trained student depends on: the bundle (data, teacher, transfer set, encoding),
    the student and the training settings (resource-only settings left out)."""
    from orchestrator.stages.pipeline import bundle_key

    from orchestrator.training.train import student_precision

    train = asdict(cfg.train)
    for k in ("cpus_per_worker", "torch_threads", "use_gpu", "precision"):
        train.pop(k, None)
    if train.get("min_epochs") is None:  # absent when unset: keys from before it stay
        train.pop("min_epochs", None)
    if student_precision(cfg.train) != "fp32":  # absent for fp32: keys from before it stay
        train["precision"] = student_precision(cfg.train)
    student = asdict(cfg.student)
    student.pop("embeddings", None)  # by content, in the bundle key
    return content_key({"v": REPORT_VERSION, "row": row.id, "tasks": sorted(data),
                        "bundle": bundle_key(cfg, data, teachers), "student": student,
                        "train": train})
