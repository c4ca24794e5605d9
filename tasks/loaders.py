"""Loaders: GLUE TSV folders, the Hugging Face hub, and the user's own CSV / TSV / JSONL files.

Every loader returns ``list[Example]`` with ``id`` = 0-based data row of its source, labels as
class indices in ``task.label_names`` order (or floats for regression). Bad rows raise
:class:`DataError` naming the file, the line and what to do.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tasks.config import DataConfig
from tasks.data import DataError, Example, TaskData, utf8_error  # TaskData: importable here too
from tasks.generated import generate_task_data
from tasks.registry import TaskSpec, custom_task, get_task, resolve_task_name

SOURCES = ("auto", "glue_dir", "hub", "custom", "generated")
GENERATED_TRAIN_DEFAULT = 512
GENERATED_DEV_DEFAULT = 128


# ---------------------------------------------------------------------------------------------
# labels and texts


# a number as a label: ASCII digits only (str.isdigit() also takes "²", which int() refuses),
# nan and inf included so that they can be refused by name
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:nan|inf|infinity)",
                     re.ASCII | re.IGNORECASE)
_INT = re.compile(r"[+-]?\d+", re.ASCII)


def _number(raw: Any) -> float | None:
    """A label's value when it is a number (a JSON number, or text written as one); else None
    (names, booleans)."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        try:
            return float(raw)
        except OverflowError:  # an integer beyond any float
            return math.inf if raw > 0 else -math.inf
    if isinstance(raw, str) and _NUMBER.fullmatch(raw.strip()):
        return float(raw)
    return None


def _whole(value: float) -> int | None:
    """``value`` as an integer when it is one (1.0 -> 1), else None: whole numbers written as
    floats are the same class as the integers."""
    return int(value) if math.isfinite(value) and value == int(value) else None


def _show(raw: Any) -> str:
    """A label as the user wrote it: strings quoted, JSON literals as JSON writes them."""
    if isinstance(raw, bool) or raw is None:
        return json.dumps(raw)
    return repr(raw)


def _label_kind(raw: Any, where: str) -> str:
    """The kind of a label: "name", "number" or "boolean". A non-finite number (nan, inf) or a
    JSON list or object is refused."""
    if isinstance(raw, bool):
        return "boolean"
    if isinstance(raw, (list, dict)):
        raise DataError(f"{where}: label {json.dumps(raw)} is a JSON "
                        f"{'list' if isinstance(raw, list) else 'object'}; a label is a class "
                        "name, a number or a boolean")
    value = _number(raw)
    if value is None:
        return "name"
    if not math.isfinite(value):
        raise DataError(f"{where}: label {_show(raw)} is not a finite number; fix or delete the "
                        "row")
    return "number"


def parse_label(raw: Any, task: TaskSpec, where: str) -> int | float:
    """One raw label -> class index or regression float. A class is matched by name; a whole
    number (``1``, ``1.0``, JSON ``true``) is matched by value when every class is named by an
    integer (classes 2 and 10: label 1 is neither), else taken as an index."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise DataError(f"{where}: missing label; every row needs one")
    if task.label_names is None:
        return _parse_score(raw, task, where)
    names = task.label_names
    text = str(raw).strip()
    if text in names:
        return names.index(text)
    _label_kind(raw, where)  # non-finite numbers, lists and objects refused
    value = float(raw) if isinstance(raw, bool) else _number(raw)
    whole = _whole(value) if value is not None else None
    by_value = all(_INT.fullmatch(n) for n in names)
    if whole is not None:
        if by_value and str(whole) in names:
            return names.index(str(whole))
        if not by_value and 0 <= whole < len(names):
            return whole
    expected = (", ".join(names) if by_value else
                f"{', '.join(names)} or an index 0..{len(names) - 1}")
    raise DataError(
        f"{where}: unknown label {text!r} for task {task.name}; expected one of {expected}. "
        "Fix the row, or set the task's label names (data.label_names) to match the file.")


def _parse_score(raw: Any, task: TaskSpec, where: str) -> float:
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = float(raw)
    except (TypeError, ValueError):
        raise DataError(f"{where}: label {raw!r} is not a number; task {task.name} is a "
                        "regression task and needs a numeric score") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: label {raw!r} is not a finite number")
    if task.score_range is not None:
        lo, hi = task.score_range
        if not lo <= value <= hi:
            raise DataError(f"{where}: score {value:g} is outside {lo:g}..{hi:g} for task "
                            f"{task.name}")
    return value


def _text(raw: Any, where: str) -> str:
    if not isinstance(raw, str):
        raise DataError(f"{where}: expected text, got {type(raw).__name__} {raw!r}")
    if "\x00" in raw:  # e.g. a JSON "\u0000": no tokenizer reads it as the user meant
        raise DataError(f"{where}: a NUL character (U+0000) at character {raw.index(chr(0)) + 1} "
                        "of the text; remove it")
    text = raw.strip()
    if not text:
        raise DataError(f"{where}: empty text; remove the row or fill in the text")
    return text


def _no_nul(f: Iterator[str], path: Path) -> Iterator[str]:
    """The lines of ``f``, refusing a NUL byte (a UTF-16 or binary file read as UTF-8, or a
    damaged one) with its line and column: csv and json would keep it in the text."""
    for line_no, line in enumerate(f, start=1):
        if "\x00" in line:
            raise DataError(f"{path}, line {line_no}, column {line.index(chr(0)) + 1}: a NUL "
                            "byte; text files hold none (is the file UTF-16, or binary?). "
                            "Re-save it as UTF-8 text, or remove the byte")
        yield line


def _unique_header(header: list[str], path: Path) -> None:
    """csv would map a repeated name to its last column: refuse it, naming both."""
    first: dict[str, int] = {}
    for i, name in enumerate(header):
        if name in first:
            raise DataError(f"{path}, line 1, column {i + 1}: the header names {name!r} twice "
                            f"(columns {first[name] + 1} and {i + 1}); rename one so that each "
                            "column has its own name")
        first[name] = i


# ---------------------------------------------------------------------------------------------
# GLUE TSV folders


@dataclass(frozen=True)
class TsvLayout:
    """Where a GLUE file keeps its texts and label: header names, or positions without a header."""

    text_columns: tuple[str | int, ...]
    label_column: str | int
    has_header: bool = True
    num_columns: int | None = None  # only for files without a header


GLUE_LAYOUTS: dict[str, TsvLayout] = {
    "cola": TsvLayout((3,), 1, has_header=False, num_columns=4),
    "sst2": TsvLayout(("sentence",), "label"),
    "mrpc": TsvLayout(("#1 String", "#2 String"), "Quality"),
    "stsb": TsvLayout(("sentence1", "sentence2"), "score"),
    "qqp": TsvLayout(("question1", "question2"), "is_duplicate"),
    "mnli": TsvLayout(("sentence1", "sentence2"), "gold_label"),
    "qnli": TsvLayout(("question", "sentence"), "label"),
    "rte": TsvLayout(("sentence1", "sentence2"), "label"),
    "wnli": TsvLayout(("sentence1", "sentence2"), "label"),
}


def glue_splits(task: TaskSpec) -> tuple[str, ...]:
    """Split names a loader accepts for ``task``: train, dev, and the task's dev splits."""
    return tuple(dict.fromkeys(("train", "dev") + task.dev_splits))


def glue_file_name(task: TaskSpec, split: str) -> str:
    """The TSV file of ``split``: train.tsv, dev.tsv; MNLI: dev_matched.tsv / dev_mismatched.tsv."""
    if split not in glue_splits(task):
        raise DataError(f"task {task.name} has no split {split!r}; choose one of "
                        f"{', '.join(glue_splits(task))}")
    if split == "dev" and task.dev_splits != ("dev",):
        split = task.dev_splits[0]  # mnli: "dev" means matched
    return f"{split}.tsv"


def load_glue_tsv(task: TaskSpec, glue_dir: str | Path, split: str) -> list[Example]:
    """Read one split of a GLUE task from the original TSV distribution under ``glue_dir``."""
    layout = GLUE_LAYOUTS.get(task.name)
    if layout is None or task.glue_dir is None:
        raise DataError(f"task {task.name} has no GLUE TSV layout; load it with "
                        "data.source=custom (CSV/TSV/JSONL with a header)")
    path = Path(glue_dir) / task.glue_dir / glue_file_name(task, split)
    if not path.is_file():
        raise DataError(
            f"{path} does not exist: expected the GLUE folder {task.glue_dir}/ with "
            f"{glue_file_name(task, split)} under {Path(glue_dir)}. Point data.glue_dir at the "
            "GLUE root (the folder holding SST-2/, MRPC/, ...) or use data.source=hub.")
    return list(_read_glue_rows(path, task, layout))


def _read_glue_rows(path: Path, task: TaskSpec, layout: TsvLayout) -> Iterator[Example]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(_no_nul(f, path), delimiter="\t", quoting=csv.QUOTE_NONE)
            header: list[str] | None = None
            if layout.has_header:
                header = next(reader, None)
                if header is None:
                    raise DataError(f"{path}: the file is empty; expected a header line")
                header = [h.strip() for h in header]
                _unique_header(header, path)
                n_cols = len(header)
            else:
                assert layout.num_columns is not None
                n_cols = layout.num_columns
            text_idx = [_column_index(c, header, path) for c in layout.text_columns]
            label_idx = _column_index(layout.label_column, header, path)
            row_id = 0
            for row in _csv_rows(reader, path):
                line = reader.line_num
                if not row:
                    continue  # blank line
                if len(row) != n_cols:
                    expected = "the header's" if header else f"{task.glue_dir}'s"
                    raise DataError(
                        f"{path}, line {line}: {len(row)} tab-separated fields, expected "
                        f"{n_cols} ({expected} column count). A stray tab or a cut line? Fix or "
                        "delete that row.")
                texts = [_text(row[i], f"{path}, line {line}, column {_col_name(i, header)}")
                         for i in text_idx]
                label = parse_label(row[label_idx], task,
                                    f"{path}, line {line}, column {_col_name(label_idx, header)}")
                yield Example(id=row_id, text_a=texts[0],
                              text_b=texts[1] if len(texts) > 1 else None, label=label)
                row_id += 1
    except UnicodeDecodeError:
        raise DataError(utf8_error(path)) from None


def _csv_rows(reader: Any, path: Path) -> Iterator[list[str]]:
    """The reader's rows, with csv's own errors turned into DataErrors naming the line."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"{path}, line {reader.line_num}: {e}; fix the row or the "
                            "file's quoting") from None
        yield row


def _column_index(col: str | int, header: list[str] | None, path: Path) -> int:
    if isinstance(col, int):
        return col
    assert header is not None
    if col not in header:
        raise DataError(f"{path}, line 1: the header has no column {col!r} (found: "
                        f"{', '.join(header)}). Is this the right task's file?")
    return header.index(col)


def _col_name(i: int, header: list[str] | None) -> str:
    return repr(header[i]) if header else str(i + 1)


# ---------------------------------------------------------------------------------------------
# Hugging Face hub


def hub_split(task: TaskSpec, split: str) -> str:
    """Our split name -> the hub's: dev -> validation; MNLI dev_matched -> validation_matched."""
    if split not in glue_splits(task):
        raise DataError(f"task {task.name} has no split {split!r}; choose one of "
                        f"{', '.join(glue_splits(task))}")
    if split == "train":
        return "train"
    if split == "dev" and task.dev_splits != ("dev",):
        split = task.dev_splits[0]
    return "validation" + split[len("dev"):]


def load_hub(task: TaskSpec, split: str, hub_name: str = "nyu-mll/glue",
             cache_dir: str | None = None) -> list[Example]:
    """Load ``split`` of ``task`` with ``datasets.load_dataset(hub_name, task.hub_config)``.

    ``hub_name`` may also be a local folder laid out like the hub repository.
    """
    if task.hub_config is None or not task.hub_text_columns:
        raise DataError(f"task {task.name} is not on the hub; use data.source=custom with "
                        "data.train_file / data.dev_file")
    name = hub_split(task, split)
    try:
        import datasets

        ds = datasets.load_dataset(hub_name, task.hub_config, split=name, cache_dir=cache_dir)
    except Exception as e:  # the hub's errors vary by version and cause; all mean "not loadable"
        raise DataError(
            f"could not load dataset {hub_name!r} (config {task.hub_config!r}, split {name!r}): "
            f"{type(e).__name__}: {e}. If this machine cannot reach the Hugging Face Hub, use a "
            "local GLUE copy: data.source=glue_dir data.glue_dir=/path/to/glue (the folder "
            f"holding {task.glue_dir or 'SST-2'}/, ...).") from e
    return _hub_examples(ds, task, f"{hub_name} ({task.hub_config}/{name})")


def _hub_examples(ds: Any, task: TaskSpec, where: str) -> list[Example]:
    missing = [c for c in (*task.hub_text_columns, "label") if c not in ds.column_names]
    if missing:
        raise DataError(f"{where}: no column {missing[0]!r} (found: {', '.join(ds.column_names)})")
    names = getattr(ds.features["label"], "names", None)
    if names is not None and task.label_names is not None and tuple(names) != task.label_names:
        raise DataError(f"{where}: label names {tuple(names)} differ from task {task.name}'s "
                        f"{task.label_names}; the class indices would not match")
    columns = ds.select_columns([*task.hub_text_columns, "label"]).to_dict()  # fast, columnar
    out: list[Example] = []
    for i, raw in enumerate(columns["label"]):
        texts = [columns[c][i] for c in task.hub_text_columns]
        label: int | float | None
        if raw is None or (task.label_names is not None and raw == -1):
            label = None  # unlabeled (test split)
        else:
            label = parse_label(raw, task, f"{where}, row {i}")
        out.append(Example(id=i, text_a=str(texts[0]).strip(),
                           text_b=str(texts[1]).strip() if len(texts) > 1 else None, label=label))
    return out


# ---------------------------------------------------------------------------------------------
# the user's own files

CUSTOM_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def read_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row as dict) for a CSV (header), TSV (header, no quoting) or JSONL file."""
    p = Path(path)
    fmt = CUSTOM_FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise DataError(f"{p}: unknown file type {p.suffix!r}; use .csv, .tsv or .jsonl")
    if not p.is_file():
        raise DataError(f"{p} does not exist; check data.train_file / data.dev_file")
    try:
        if fmt == "jsonl":
            yield from _jsonl_records(p)
        else:
            yield from _table_records(p, fmt)
    except UnicodeDecodeError:
        raise DataError(utf8_error(p)) from None


def _table_records(p: Path, fmt: str) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(p, encoding="utf-8-sig", newline="") as f:
        if fmt == "tsv":  # GLUE convention: quotes are ordinary characters
            reader = csv.reader(_no_nul(f, p), delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(_no_nul(f, p))
        header = next(reader, None)
        if header is None:
            raise DataError(f"{p}: the file is empty; expected a header line naming the columns")
        header = [h.strip() for h in header]
        _unique_header(header, p)
        line = reader.line_num + 1
        for row in _csv_rows(reader, p):
            start, line = line, reader.line_num + 1
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                raise DataError(f"{p}, line {start}: {len(row)} fields, expected {len(header)} "
                                f"(header: {', '.join(header)}). Fix or delete that row.")
            yield start, dict(zip(header, row))


class _RepeatedKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for k, v in pairs:
        if k in obj:
            raise _RepeatedKey(k)
        obj[k] = v
    return obj


def _jsonl_records(p: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(p, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(_no_nul(f, p), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line, object_pairs_hook=_unique_keys)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}, line {line_no}: not valid JSON ({e.msg}); each line must "
                                "be one JSON object") from None
            except _RepeatedKey as e:  # json keeps the last of a repeated key, silently
                raise DataError(f"{p}, line {line_no}: the object has key {e.args[0]!r} twice; "
                                "remove or rename one") from None
            if not isinstance(obj, dict):
                raise DataError(f"{p}, line {line_no}: expected a JSON object, got "
                                f"{type(obj).__name__}")
            yield line_no, obj


def load_custom(path: str | Path, text_columns: list[str], label_column: str | None,
                task: TaskSpec) -> list[Example]:
    """Examples from the user's CSV / TSV / JSONL file (format from the extension)."""
    if len(text_columns) != (2 if task.is_pair else 1):
        raise DataError(f"task {task.name} is a {'pair' if task.is_pair else 'single-text'} "
                        f"task but data.text_columns has {len(text_columns)} column(s): "
                        f"{text_columns}; give {'two' if task.is_pair else 'one'}")
    out: list[Example] = []
    for line, rec in read_records(path):
        where = f"{path}, line {line}"
        texts = [_text(_field(rec, c, where), f"{where}, column {c!r}") for c in text_columns]
        label = None
        if label_column is not None:
            label = parse_label(_field(rec, label_column, where), task,
                                f"{where}, column {label_column!r}")
        out.append(Example(id=len(out), text_a=texts[0],
                           text_b=texts[1] if len(texts) > 1 else None, label=label))
    return out


def _field(rec: dict[str, Any], column: str, where: str) -> Any:
    if column not in rec:
        raise DataError(f"{where}: no column {column!r} (found: {', '.join(map(str, rec))}); "
                        "set data.text_columns / data.label_column to the file's column names")
    return rec[column]


def infer_label_names(path: str | Path, label_column: str) -> tuple[str, ...] | None:
    """Distinct labels of a file, sorted (numerically when all are integers); ``None`` when the
    labels are numbers and some are not whole (a score: a regression task)."""
    p = Path(path)
    stat = p.stat() if p.is_file() else None
    key = (str(p.resolve()), label_column, stat.st_mtime_ns if stat else 0,
           stat.st_size if stat else 0)
    if key not in _INFERRED:
        _INFERRED[key] = _infer_label_names(p, label_column)
    return _INFERRED[key]


_INFERRED: dict[tuple, tuple[str, ...] | None] = {}  # the file read once per process and version


def _infer_label_names(path: Path, label_column: str) -> tuple[str, ...] | None:
    seen: set[str] = set()
    first: tuple[str, int, Any] | None = None  # the first label's kind, line and value
    scores = False  # some number is not whole
    for line, rec in read_records(path):
        raw = _field(rec, label_column, f"{path}, line {line}")
        where = f"{path}, line {line}, column {label_column!r}"
        if raw is None or not str(raw).strip():
            raise DataError(f"{where}: missing label; every row needs one")
        kind = _label_kind(raw, where)
        if first is None:
            first = (kind, line, raw)
        elif kind != first[0]:
            raise DataError(
                f"{where}: label {_show(raw)} is a {kind}, but line {first[1]} has a {first[0]} "
                f"({_show(first[2])}); one label column holds one kind of label (names, numbers "
                "or booleans). Fix the rows, or give the classes with data.label_names (numbers "
                "and booleans are then read as class indices)")
        if kind == "number":
            whole = _whole(_number(raw))  # type: ignore[arg-type]
            scores = scores or whole is None
            seen.add(str(raw).strip() if whole is None else str(whole))
        else:
            seen.add(str(raw).strip())
    if scores:
        return None  # scores such as 3.8: regression
    if len(seen) < 2:
        raise DataError(f"{path}: column {label_column!r} has {len(seen)} distinct label(s) "
                        f"({', '.join(sorted(seen))}); classification needs at least 2. Use "
                        "another label column, or set data.regression=true for a score")
    if first is not None and first[0] == "number":
        return tuple(sorted(seen, key=int))
    return tuple(sorted(seen))


# ---------------------------------------------------------------------------------------------
# one entry point for a stage: config -> task + data


@dataclass(frozen=True)
class TaskSource:
    """What decides a task's spec: its name and, for the user's own files, where the texts and
    labels are. :func:`task_spec` turns it into the one :class:`TaskSpec` every stage uses."""

    task: str
    source: str = "auto"
    train_file: str | None = None
    text_columns: tuple[str, ...] = ("text",)
    label_column: str = "label"
    label_names: tuple[str, ...] | None = None
    regression: bool = False

    @classmethod
    def of(cls, cfg: Any, task: str | None = None) -> "TaskSource":
        """From any object with a DataConfig's fields (e.g. :class:`tasks.config.DataConfig`);
        ``task`` names one task of a multi-task experiment (default ``cfg.task``)."""
        return cls(task=task or cfg.task, source=cfg.source, train_file=cfg.train_file,
                   text_columns=tuple(cfg.text_columns), label_column=cfg.label_column,
                   label_names=tuple(cfg.label_names) if cfg.label_names else None,
                   regression=bool(cfg.regression))

    @property
    def custom(self) -> bool:
        """The user's own files (data.source=custom, or auto with a training file)."""
        return self.source == "custom" or (self.source == "auto" and bool(self.train_file))


def task_spec(src: TaskSource) -> TaskSpec:
    """The one place that decides a task's spec: a GLUE task, or the user's own data. For own
    data: pair when data.text_columns names two columns; regression when data.regression is set
    or the labels are numbers that are not all whole; else the classes are data.label_names when
    given, or the distinct labels of the training file (sorted; numerically for integers)."""
    canonical = resolve_task_name(src.task)
    if not src.custom:
        if src.source == "generated":
            if canonical is not None:
                return get_task(canonical)
            return custom_task(src.task, is_pair=False, label_names=("negative", "positive"))
        return get_task(src.task)  # not a GLUE name: raises UnknownTaskError listing them
    if len(src.text_columns) not in (1, 2):
        raise DataError(f"data.text_columns={list(src.text_columns)}: give one column (single "
                        "text) or two (a pair task)")
    is_pair = len(src.text_columns) == 2
    if src.regression:
        labels: tuple[str, ...] | None = None
    elif src.label_names:
        labels = tuple(str(x) for x in src.label_names)
    else:
        if not src.train_file:
            raise DataError("data.source=custom needs data.train_file (CSV, TSV or JSONL)")
        labels = infer_label_names(src.train_file, src.label_column)
    return custom_task(src.task, is_pair=is_pair, label_names=labels)


def describe_task(task: TaskSpec, src: TaskSource | None = None, shown: int = 30) -> str:
    """One line saying how every stage will read the task's labels: classification with its
    classes in index order, or regression; for own data, whether that was inferred."""
    if task.label_names is None:
        what = "regression (one score per row)"
    else:
        names = task.label_names
        more = f", ... ({len(names) - shown} more)" if len(names) > shown else ""
        what = (f"classification, {len(names)} classes in order: "
                f"{', '.join(names[:shown])}{more}")
    if src is not None and src.custom and not src.label_names and not src.regression:
        what += (f" (inferred from the labels of {src.train_file}; set data.label_names, or "
                 "data.regression=true for a score, to read them otherwise)")
    return f"task {task.name}: {what}"


def task_from_config(cfg: DataConfig, task: str | None = None) -> TaskSpec:
    """The TaskSpec a DataConfig describes (:func:`task_spec`); ``task``: one of several."""
    return task_spec(TaskSource.of(cfg, task))


def resolve_source(cfg: DataConfig, task: TaskSpec) -> str:
    """``cfg.source`` with "auto" decided: custom file, then local GLUE folder, then the hub."""
    if cfg.source not in SOURCES:
        raise DataError(f"data.source={cfg.source!r}: choose one of {', '.join(SOURCES)}")
    if cfg.source != "auto":
        return cfg.source
    if cfg.train_file:
        return "custom"
    if cfg.glue_dir and task.glue_dir and (Path(cfg.glue_dir) / task.glue_dir).is_dir():
        return "glue_dir"
    if task.hub_config:
        return "hub"
    raise DataError(f"task {task.name}: no data source; set data.train_file (custom) or "
                    "data.source=generated")


def load_task_data(cfg: DataConfig, task: TaskSpec) -> TaskData:
    """Train and dev examples for ``task`` as ``cfg`` says, subset to the configured maxima."""
    source = resolve_source(cfg, task)
    if source == "generated":
        data = generate_task_data(task, cfg.max_train_examples or GENERATED_TRAIN_DEFAULT,
                                  cfg.max_dev_examples or GENERATED_DEV_DEFAULT, cfg.seed)
        return data
    if source == "glue_dir":
        if not cfg.glue_dir:
            raise DataError("data.source=glue_dir needs data.glue_dir (the GLUE root folder "
                            "holding SST-2/, MRPC/, ...)")
        root = cfg.glue_dir
        train = load_glue_tsv(task, root, "train")
        dev = {s: load_glue_tsv(task, root, s) for s in task.dev_splits}
    elif source == "hub":
        train = load_hub(task, "train", cfg.hub_name)
        dev = {s: load_hub(task, s, cfg.hub_name) for s in task.dev_splits}
    else:  # custom
        if not cfg.train_file or not cfg.dev_file:
            raise DataError("data.source=custom needs data.train_file and data.dev_file "
                            "(CSV, TSV or JSONL)")
        cols = list(cfg.text_columns)
        train = load_custom(cfg.train_file, cols, cfg.label_column, task)
        dev = {task.dev_splits[0]: load_custom(cfg.dev_file, cols, cfg.label_column, task)}
    return TaskData(
        task=task,
        train=take_subset(train, cfg.max_train_examples, cfg.seed),
        dev={s: take_subset(ex, cfg.max_dev_examples, cfg.seed) for s, ex in dev.items()},
        source=source,
    )


def check_task_data(cfg: DataConfig, task: TaskSpec, rows: int = 50) -> str:
    """Parse each file a task would read, without keeping its examples, so a wrong path, column,
    label or text fails before any work; returns the resolved source. The user's own files are
    read whole; a GLUE folder's files (the published distribution) up to ``rows`` rows. The hub
    is not contacted (its errors come when the data loads)."""
    import itertools

    source = resolve_source(cfg, task)
    if source == "glue_dir":
        if not cfg.glue_dir:
            raise DataError("data.source=glue_dir needs data.glue_dir (the GLUE root folder "
                            "holding SST-2/, MRPC/, ...)")
        layout = GLUE_LAYOUTS.get(task.name)
        if layout is None or task.glue_dir is None:
            raise DataError(f"task {task.name} has no GLUE TSV layout; load it with "
                            "data.source=custom (CSV/TSV/JSONL with a header)")
        for split in ("train", *task.dev_splits):
            path = Path(cfg.glue_dir) / task.glue_dir / glue_file_name(task, split)
            if not path.is_file():
                load_glue_tsv(task, cfg.glue_dir, split)  # raises, naming the expected layout
            list(itertools.islice(_read_glue_rows(path, task, layout), rows))
    elif source == "custom":
        if not cfg.train_file or not cfg.dev_file:
            raise DataError("data.source=custom needs data.train_file and data.dev_file "
                            "(CSV, TSV or JSONL)")
        if len(cfg.text_columns) != (2 if task.is_pair else 1):
            load_custom(cfg.train_file, list(cfg.text_columns), cfg.label_column, task)  # raises
        for f in (cfg.train_file, cfg.dev_file):
            n = 0
            for line, rec in read_records(f):
                n += 1
                where = f"{f}, line {line}"
                for c in cfg.text_columns:
                    _text(_field(rec, c, where), f"{where}, column {c!r}")
                parse_label(_field(rec, cfg.label_column, where), task,
                            f"{where}, column {cfg.label_column!r}")
            if not n:
                raise DataError(f"{f}: no rows; expected a header and at least one example")
    return source


def take_subset(examples: list[Example], n: int | None, seed: int) -> list[Example]:
    """At most ``n`` examples: a seeded shuffle, first ``n`` taken, returned in original order.

    A smaller ``n`` with the same seed gives a subset of a larger one.
    """
    if n is None or n >= len(examples):
        return list(examples)
    if n < 0:
        raise DataError(f"max examples must be >= 0, got {n}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in sorted(order[:n])]


def data_fingerprint(examples: list[Example]) -> str:
    """Short sha256 of the texts and labels, in order (for cache keys)."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.text_a, ex.text_b, ex.label], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]
