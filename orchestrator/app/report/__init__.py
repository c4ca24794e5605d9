"""The results table: teachers and students of every kind on the same tasks, budget and seeds.

    distillray report --budget small --tasks sst2,mrpc --out report.md

Rows (no search; every student gets the same epoch limit, batch size and seed; with
``--budget full`` the BiLSTM rows each pick ``train.lr`` from one grid on dev, ``LR_GRID``):

    1a  teacher        the base model fine-tuned on each task (``orchestrator.stages.teacher``)
    1b  teacher_mkd    one multi-task teacher refined on all tasks
                       (``orchestrator.stages.multitask_teacher``)
    2   bilstm_gold    BiLSTM (Tang et al. 2019) on gold labels only (``train.loss=ce``)
    3   bilstm_kd      BiLSTM distilled from row 1a (MSE on logits), original training set
    4   bilstm_soft    BiLSTM_SOFT: distilled on the Tang-augmented transfer set
    5a  mkd_bcn        BCN distilled jointly on all tasks from row 1b (MKD)
    5b  mkd_transformer  3-layer Transformer, from row 1b's layers, distilled jointly (MKD;
                       learning rate x0.1, as a pre-initialized encoder needs)
    6a  bcn_kd         the BCN of row 5a distilled per task from row 1a (single-task KD)
    6b  transformer_kd the Transformer of row 5b distilled per task from row 1a
    ref bert_base      the BERT-base architecture (random weights): size and latency only

Each (row, task) is one MLflow run (a *cell*) tagged ``distillray.kind=report-cell``,
``distillray.report=<name>``, ``distillray.row=<row>``, ``distillray.task=<task>`` and
``distillray.config_key=<key>``, holding ``report_*`` metrics (the task's dev metrics, ``score``,
non-embedding params, batch-1 / batch-64 latency and the ratios), under one parent run
(``distillray.kind=report``) that carries the table as ``report.md``. Every student trains in a
``report-train`` run (one per learning rate of a tuned cell; one joint run per MKD row) that
holds its learning curve and best student; the cell points at the one it kept
(``distillray.train_run``).

Everything expensive is reused: teachers, transfer sets, soft labels and bundles through the
pipeline's content-keyed caches; a train or cell run for the same config key that already
FINISHED in this report is not trained again (its metrics and student are read back from
MLflow). A train run a killed call left unfinished is resumed: the same MLflow run, and Ray
Train's run named by the key restores its last checkpoint (weights, optimizer, batch order, RNG),
so the student equals an uninterrupted one. Latency is measured again on every call, interleaved
across all rows and BERT-base, so the ratios always come from one measurement.

Flags: row 4 must beat rows 2 and 3; each MKD row must beat row 3 and the single-task KD of
its own student (6a, 6b: same transfer data, loss and epochs); row 1b must beat row 1a. A row
that does not is marked in the table and listed, never hidden.

The package: ``rows`` (rows, budgets, a row's config and a cell's key), ``context`` (one call's
state), ``teachers`` and ``students`` (the cells), ``measure`` (size and latency), ``table``
(flags, the table, the record), ``run`` (``run_report``).
"""
from __future__ import annotations

from orchestrator.app.report.rows import (BERT_BASE, BUDGET_CAPS, BUDGET_FULL, BUDGET_ROW_SETS,
                                          BUDGETS, GRID_RUNG, KIND_CELL, KIND_PARENT, KIND_TRAIN,
                                          LR_GRID, METRIC_SHORT, REPORT_VERSION, ROW_IDS, ROWS,
                                          TAG_CONFIG, TAG_REPORT, TAG_ROW, TAG_TASK, Cell,
                                          ReportError, Row, budget_overrides, cell_key,
                                          describe_budget, parse_row_sets, resolve_report,
                                          row_config, select_rows)
from orchestrator.app.report.run import ReportResult, results_json, run_report, stage_seconds
from orchestrator.app.report.table import build_table, format_markdown, results_markdown

__all__ = [
    "REPORT_VERSION", "KIND_PARENT", "KIND_CELL", "KIND_TRAIN", "TAG_REPORT", "TAG_ROW",
    "TAG_TASK", "TAG_CONFIG", "BERT_BASE", "Row", "ROWS", "ROW_IDS", "BUDGET_CAPS",
    "BUDGET_FULL", "BUDGETS", "LR_GRID", "GRID_RUNG", "BUDGET_ROW_SETS", "METRIC_SHORT",
    "ReportError", "Cell", "ReportResult", "resolve_report", "budget_overrides",
    "describe_budget", "parse_row_sets", "select_rows", "row_config", "cell_key", "run_report",
    "stage_seconds", "results_json", "build_table", "format_markdown",
    "results_markdown",
]
