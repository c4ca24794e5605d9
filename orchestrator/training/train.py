"""The parts a student's training is made of: the student built from a bundle, batches and
endless per-task batch streams, optimizer steps, dev evaluation, and the student saved and loaded.

:mod:`orchestrator.training.worker` runs them as one Ray Train worker's loop and
:mod:`orchestrator.training.distill` starts that loop for one student. Single-task KD (Tang et
al.) and multi-task KD (MKD) share them: each step takes a batch of one task and fits that
task's teacher logits with the loss from ``students.losses``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import torch

from orchestrator.config import ExperimentConfig
from orchestrator.teachers.batching import length_grouped_batches, length_sorted_batches
from orchestrator.training import checkpoint as ckpt
from orchestrator.training.bundle import TaskTensors, read_meta, read_split
from students.factory import build_student
from students.losses import distillation_loss
from students.registry import student_kind
from tasks.metrics import compute_metrics
from tasks.registry import TaskSpec

REPORT = "report"  # the report count in what a trial reports: the time of Tune's early stopping


def task_spec_from_meta(d: dict) -> TaskSpec:
    names = {f.name for f in fields(TaskSpec)}
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
    return TaskSpec(**kw)


def meta_heads(meta: dict) -> dict[str, int]:
    return {t: int(m["num_outputs"]) for t, m in meta["tasks"].items()}


def build_from_meta(cfg: ExperimentConfig, meta: dict, embeddings: np.ndarray | None):
    """The student's modules for a bundle's meta. Without ``embeddings`` (rebuilding a saved
    student) the word-vector size is the bundle's (e.g. 50 for GloVe 50d), not ``embed_dim``."""
    pair = any(m["pair"] for m in meta["tasks"].values()) and meta["encoding"] == "words"
    student = cfg.student
    if embeddings is None and meta.get("embed_dim"):
        student = replace(student, embed_dim=int(meta["embed_dim"]))
    return build_student(student, meta["vocab_size"], meta_heads(meta), pair, embeddings,
                         max_position=meta.get("student_max_position"))


def init_teacher_path(meta: dict) -> str:
    """The teacher whose layers seed a Transformer student: the one teacher of the bundle (a
    single task, or a multi-task teacher serving every task); with a teacher per task, the
    encoder they all came from: the multi-task teacher they were refined from, else their
    common base model when it is a local directory, else the first task's teacher."""
    teachers = meta.get("teachers") or {}
    if not teachers:
        raise ValueError("student.init_from_teacher is set but the bundle names no teacher")
    paths = list(dict.fromkeys(t["path"] for t in teachers.values()))
    if len(paths) == 1:
        return paths[0]
    origins = {_teacher_origin(p) for p in paths}
    origin = origins.pop() if len(origins) == 1 else None
    if origin and (Path(origin) / "config.json").is_file():
        return origin
    print(f"[train] the bundle's teachers share no local origin ({sorted(map(str, origins))}): "
          f"the student starts from the first task's teacher {paths[0]}", flush=True)
    return paths[0]


def _teacher_origin(path: str) -> str | None:
    """Where a saved teacher started: the multi-task teacher it was refined from, or its base."""
    f = Path(path) / "teacher_config.json"
    if not f.is_file():
        return None
    rec = json.loads(f.read_text())
    return rec.get("refined_from") or rec.get("base_model")


def build_for_training(cfg: ExperimentConfig, meta: dict, embeddings: np.ndarray | None):
    """A trial's fresh student, and the meta to save with it.

    With a student that can start from teacher layers (``student.arch=transformer``) and
    ``student.init_from_teacher`` other than ``none``, the
    student copies the teacher's embeddings, pooler and the chosen layers (``first``, ``even`` or
    ``"0,2,4"``; :func:`students.transformer.init_from_bert`). Its position table takes the
    teacher's size when that is smaller than the default; the saved meta records it so
    :func:`load_student` rebuilds the same shape. Returns ``(model, meta, teacher layers used)``."""
    s = cfg.student
    if not student_kind(s.arch).from_teacher_layers or s.init_from_teacher == "none":
        return build_from_meta(cfg, meta, embeddings), meta, None
    from orchestrator.teachers.teacher_model import load_teacher
    from students.factory import MAX_POSITION
    from students.transformer import init_from_bert

    teacher = load_teacher(init_teacher_path(meta))
    tconf = getattr(teacher.model, "config", None) or teacher.model.encoder.config
    positions = int(getattr(tconf, "max_position_embeddings", MAX_POSITION))
    meta = {**meta, "student_max_position": min(max(MAX_POSITION, s.max_length), positions)}
    model = build_from_meta(cfg, meta, embeddings)
    chosen = init_from_bert(model, teacher.model, s.init_from_teacher)
    return model, meta, chosen


# ---------------------------------------------------------------------------------------------
# batches

def pad(seqs: list[list[int]], max_len: int | None = None) -> torch.Tensor:
    n = max((len(s) for s in seqs), default=1) or 1
    if max_len:
        n = min(n, max_len)
    out = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        s = s[:n]
        if s:
            out[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def make_batch(t: TaskTensors, idx: list[int]) -> dict[str, torch.Tensor | None]:
    return {
        "ids_a": pad([t.ids_a[i] for i in idx]),
        "ids_b": pad([t.ids_b[i] for i in idx]) if t.ids_b is not None else None,
        "types": pad([t.types[i] for i in idx]) if t.types is not None else None,
        "label": torch.as_tensor(t.label[idx], dtype=torch.float32),
        "logits": torch.as_tensor(t.logits[idx]) if t.logits is not None else None,
    }


def forward(model, batch, task: str):
    if batch["types"] is not None:  # wordpiece (transformer student): pair already joined
        return model(batch["ids_a"], None, task, token_type_ids=batch["types"])
    return model(batch["ids_a"], batch["ids_b"], task)


class TaskStream:
    """Endless shuffled batches of one task's shard; reshuffles each pass. With on-demand
    ``labels``, the logits of a batch and of the next ones (about ``prefetch_rows`` rows in
    all) are fetched together the first time any of them lacks its label."""

    def __init__(self, data: TaskTensors, shard: np.ndarray, batch_size: int, seed: int,
                 labels=None, prefetch_rows: int = 2048):
        self.data, self.shard, self.bs = data, shard, batch_size
        self.rng = np.random.default_rng(seed)
        self.queue: list[np.ndarray] = []
        self.labels = labels
        self.prefetch = max(1, prefetch_rows // batch_size)

    def next(self) -> dict:
        if not self.queue:
            perm = self.rng.permutation(self.shard)
            # grouped by length inside windows of 32 batches (less padding), then shuffled
            chunks = [np.asarray(b, dtype=np.int64) for b in length_grouped_batches(
                perm, lambda i: len(self.data.ids_a[i]), self.bs, window=32)]
            self.rng.shuffle(chunks)
            self.queue = chunks
        idx = self.queue.pop()
        if self.labels is not None and not self.labels.have[idx].all():
            self.labels.ensure(np.concatenate([idx, *self.queue[-self.prefetch:]]))
        return make_batch(self.data, list(idx))

    def state(self) -> dict:
        """Where the stream stands (its generator and the batches left of this pass), for a
        checkpoint: a stream restored from it yields the same batches as one never stopped."""
        return {"rng": json.dumps(self.rng.bit_generator.state),
                "queue": [torch.from_numpy(np.asarray(q, dtype=np.int64)) for q in self.queue]}

    def restore(self, state: dict) -> None:
        self.rng.bit_generator.state = json.loads(state["rng"])
        self.queue = [q.numpy() for q in state["queue"]]


# ---------------------------------------------------------------------------------------------
# evaluation

@torch.inference_mode()
def predict(model, data: TaskTensors, task: str, batch_size: int = 256) -> np.ndarray:
    model.eval()
    out = None
    for idx in length_sorted_batches([len(x) for x in data.ids_a], batch_size):
        logits = forward(model, make_batch(data, idx), task).float().numpy()
        if out is None:
            out = np.zeros((len(data.ids_a), logits.shape[1]), dtype=np.float32)
        out[idx] = logits
    return out if out is not None else np.zeros((0, 1), np.float32)


def evaluate(model, dev: dict[tuple[str, str], TaskTensors], specs: dict[str, TaskSpec]) -> dict[str, float]:
    """Per task and split: the task's metrics and score; ``dev_score`` = mean of task scores on
    each task's first dev split (GLUE-style average). Single-task runs also get ``dev_<metric>``."""
    metrics: dict[str, float] = {}
    scores = []
    for (task, split), data in dev.items():
        m = compute_metrics(specs[task], predict(model, data, task), data.label)
        prefix = task if split == specs[task].dev_splits[0] or split == "dev" else f"{task}_{split}"
        for k, v in m.items():
            metrics[f"{prefix}_{k}"] = float(v)
        if prefix == task:
            scores.append(float(m["score"]))
            if len(specs) == 1:
                for k, v in m.items():
                    metrics[f"dev_{k}"] = float(v)
    metrics["dev_score"] = float(np.mean(scores)) if scores else float("nan")
    return metrics


# ---------------------------------------------------------------------------------------------
# bundles and saved students

def load_bundle(bundle: str | Path, tasks: list[str] | None = None):
    meta = read_meta(bundle)
    names = tasks or list(meta["tasks"])
    train = {t: read_split(Path(bundle) / f"train-{t}.parquet") for t in names}
    dev = {(t, s): read_split(Path(bundle) / f"dev-{t}-{s}.parquet")
           for t in names for s in meta["tasks"][t]["dev_splits"]}
    specs = {t: task_spec_from_meta(meta["tasks"][t]["spec"]) for t in names}
    return meta, train, dev, specs


def save_student(model, out_dir: Path, cfg: ExperimentConfig, meta: dict, bundle: Path,
                 extra: dict | None = None) -> None:
    """Weights as safetensors, the config that rebuilds the model, and the vocabulary."""
    import shutil

    from safetensors.torch import save_file

    module = model.module if hasattr(model, "module") else model
    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
              str(out_dir / ckpt.MODEL))
    (out_dir / ckpt.STUDENT).write_text(json.dumps({
        "student": asdict(cfg.student), "meta": meta, **(extra or {})}, indent=1))
    if (bundle / ckpt.VOCAB).is_file():
        shutil.copy(bundle / ckpt.VOCAB, out_dir / ckpt.VOCAB)
    if (bundle / ckpt.TOKENIZER).is_dir():
        shutil.copytree(bundle / ckpt.TOKENIZER, out_dir / ckpt.TOKENIZER, dirs_exist_ok=True)


def load_student(ckpt_dir: str | Path, task: str | None = None):
    """Rebuild a saved student (weights via safetensors, never pickle). ``task``: the student
    MKD's stage 2 fine-tuned for that task (``model-<task>.safetensors``), when it has one."""
    from orchestrator.config import from_dict, StudentConfig
    from safetensors.torch import load_file

    d = Path(ckpt_dir)
    for f in ckpt.STUDENT_FILES:
        if not (d / f).is_file():
            raise FileNotFoundError(f"student dir {d} lacks {f}: the run's artifacts are incomplete")
    info = json.loads((d / ckpt.STUDENT).read_text())
    cfg = ExperimentConfig(student=from_dict(StudentConfig, info["student"]))
    model = build_from_meta(cfg, info["meta"], None)
    weights = d / ckpt.MODEL
    if task is not None:
        if task not in info.get("finetuned_tasks", []):
            raise FileNotFoundError(f"student dir {d} has no stage-2 student for task {task!r} "
                                    f"(fine-tuned: {info.get('finetuned_tasks', [])})")
        weights = d / ckpt.task_model(task)
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    return model, info


# ---------------------------------------------------------------------------------------------
# optimizer steps

def student_precision(tc) -> str:
    """``train.precision`` resolved for where the student trains."""
    from orchestrator.runtime.precision import resolve

    return resolve(tc.precision, "cuda" if tc.use_gpu else "cpu", "train.precision")


def train_steps(model, optimizer, streams: dict[str, "TaskStream"], tasks: list[str],
                specs: dict[str, TaskSpec], tc, precision: str = "fp32") -> float:
    """One optimizer step per entry of ``tasks`` (a batch of that task each); mean loss. The
    forward pass runs under ``precision`` autocast (a resolved one); the loss takes fp32."""
    from orchestrator.runtime.precision import autocast

    model.train()
    total = 0.0
    device = "cuda" if tc.use_gpu else "cpu"
    for task in tasks:
        batch = streams[task].next()
        with autocast(precision, device):
            out = forward(model, batch, task)
        out = out.float()
        spec = specs[task]
        gold = batch["label"]
        if not spec.is_regression:
            gold = torch.where(torch.isnan(gold), torch.full_like(gold, -1), gold).long()
        loss = distillation_loss(out, batch["logits"], gold, kind=tc.loss, alpha=tc.alpha,
                                 temperature=tc.temperature, regression=spec.is_regression)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        total += loss.item()
    return total / max(1, len(tasks))
