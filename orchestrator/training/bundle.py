"""The training bundle: everything a student trial reads, pre-encoded, in one directory.

Written once per (transfer set, teacher labels, student tokenization) by the pipeline and shared
by every trial that needs the same; read by Ray Train workers without any tokenizer. With
``train.soft_labels=on_demand`` the train splits carry no logits: the workers get them from the
teacher pool as they train (:mod:`orchestrator.teachers.on_demand_labels`), from the texts file.

Layout::

    meta.json                      tasks, encoding, vocab size, embedding info
    train-<task>.parquet           ids_a, ids_b, types (wordpiece only), label, logits
    texts-<task>.parquet           text_a, text_b of the train rows (on-demand labels only)
    dev-<task>-<split>.parquet     ids_a, ids_b, types, label
    vocab.json | tokenizer/        word vocabulary, or the teacher's tokenizer (wordpiece)
    embeddings.npy                 optional, float32 [vocab, dim]
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


@dataclass
class TaskTensors:
    ids_a: list[list[int]]
    ids_b: list[list[int]] | None
    types: list[list[int]] | None
    label: np.ndarray  # float64, NaN where unknown
    logits: np.ndarray | None  # float32 [N, C]

    def __len__(self) -> int:
        return len(self.ids_a)


def write_split(path: Path, ids_a, ids_b, types, label, logits=None) -> None:
    cols = {"ids_a": pa.array(ids_a, type=pa.list_(pa.int32()))}
    if ids_b is not None:
        cols["ids_b"] = pa.array(ids_b, type=pa.list_(pa.int32()))
    if types is not None:
        cols["types"] = pa.array(types, type=pa.list_(pa.int8()))
    cols["label"] = pa.array(np.asarray(label, dtype=np.float64))
    if logits is not None:
        logits = np.asarray(logits, dtype=np.float32)
        cols["logits"] = pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)), logits.shape[1])
    pq.write_table(pa.table(cols), path)


def write_texts(path: Path, examples) -> None:
    """The raw texts of a split's rows (``text_a``, ``text_b``), for on-demand teacher labels."""
    pq.write_table(pa.table({"text_a": pa.array([e.text_a for e in examples], pa.string()),
                             "text_b": pa.array([e.text_b for e in examples], pa.string())}), path)


def read_texts(path: Path) -> tuple[list[str], list[str | None] | None]:
    t = pq.read_table(path)
    b = t.column("text_b").to_pylist()
    return t.column("text_a").to_pylist(), (None if all(x is None for x in b) else b)


def read_split(path: Path) -> TaskTensors:
    t = pq.read_table(path)
    names = t.column_names
    logits = None
    if "logits" in names:
        col = t.column("logits").combine_chunks()
        width = col.type.list_size
        logits = col.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, width)
    return TaskTensors(
        ids_a=t.column("ids_a").to_pylist(),
        ids_b=t.column("ids_b").to_pylist() if "ids_b" in names else None,
        types=t.column("types").to_pylist() if "types" in names else None,
        label=t.column("label").to_numpy(zero_copy_only=False).astype(np.float64),
        logits=logits,
    )


def read_meta(bundle: str | Path) -> dict:
    p = Path(bundle) / "meta.json"
    if not p.is_file():
        raise FileNotFoundError(f"training bundle {bundle} is incomplete (no meta.json); "
                                "delete it and re-run to rebuild")
    return json.loads(p.read_text())


def load_embeddings(bundle: str | Path) -> np.ndarray | None:
    p = Path(bundle) / "embeddings.npy"
    return np.load(p, allow_pickle=False) if p.is_file() else None
