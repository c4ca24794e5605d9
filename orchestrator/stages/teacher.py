"""Teacher stage: fine-tune an HF encoder on a task, evaluate on dev, save, reuse when unchanged.

The result is a Hugging Face directory under ``<work_root>/teachers/<key>/`` where the key hashes
the base model, task, training data and settings; a second call with the same inputs reuses it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from orchestrator.config import TeacherConfig
from orchestrator.runtime import faults
from orchestrator.runtime.keys import atomic_dir, atomic_file, content_key
from orchestrator.runtime.precision import autocast, resolve
from orchestrator.runtime.progress import StageProgress
from orchestrator.teachers.batching import length_grouped_batches, length_sorted_batches
from orchestrator.teachers.teacher_model import (HEADS_FILE, RUN_RECORD_FILE, TeacherError,
                                                 base_model_identity, create_random_teacher)
from tasks.data import Example
from tasks.loaders import take_subset
from tasks.metrics import compute_metrics
from tasks.registry import TaskSpec
from tasks.text import tokenize

TEACHER_VERSION = 1
TRAIN_INFO_FILE = "train_info.json"  # steps, the dev curve, the step whose weights were kept


@dataclass
class TeacherResult:
    path: Path
    key: str
    metrics: dict[str, float]
    reused: bool
    seconds: float


def training_precision(cfg: TeacherConfig) -> str:
    """``teacher.precision`` resolved for this machine's CPU (where teachers fine-tune)."""
    return resolve(cfg.precision, "cpu", "teacher.precision")


def training_settings(cfg: TeacherConfig) -> dict:
    """The settings that shape a teacher's weights (the base model is keyed separately)."""
    d = asdict(cfg)
    # which stage runs, how often it checkpoints, per-task settings (resolved by for_task before
    # the key is taken): none shapes the weights, and leaving them out keeps old keys valid
    for k in ("multitask", "precision", "per_task", "checkpoint_minutes"):
        d.pop(k, None)
    # a multi-task teacher's only: its key adds it when it is not 1 (multitask_teacher_key)
    d.pop("mixture_tau", None)
    d.pop("refine_epochs", None)  # a stage after the multi-task teacher (refined_teacher_key)
    if not d.pop("keep_best_epoch", False):  # False: the last epoch, as before it existed
        d["keep_best_epoch"] = False
    precision = training_precision(cfg)
    if precision != "fp32":  # absent for fp32: teachers fine-tuned before stay valid
        d["precision"] = precision
    return {**d, "model": None}


def teacher_key(cfg: TeacherConfig, task: TaskSpec, data_fingerprint: str) -> str:
    cfg = cfg.for_task(task.name)
    return content_key({"v": TEACHER_VERSION, "model": base_model_identity(cfg.model),
                        "task": task.name, "data": data_fingerprint,
                        "cfg": training_settings(cfg)})


def finetune_teacher(cfg: TeacherConfig, task: TaskSpec, train: list[Example],
                     dev: list[Example], work_root: str | Path, data_fingerprint: str,
                     log=print) -> TeacherResult:
    """Fine-tune (or reuse) a teacher; returns where it lies and its dev metrics."""
    cfg = cfg.for_task(task.name)
    key = teacher_key(cfg, task, data_fingerprint)
    return _train_task_teacher(cfg, task, train, dev, Path(work_root) / "teachers" / key, key,
                               lambda partial: _init_model(cfg, task, train, partial),
                               {"base_model": cfg.model}, f"teacher {task.name}", log)


def refined_teacher_key(multitask_key: str, cfg: TeacherConfig, task: TaskSpec,
                        data_fingerprint: str) -> str:
    """A per-task refinement of a multi-task teacher: that teacher, the task, its data and the
    task's settings with ``refine_epochs`` as its epochs."""
    cfg = refine_settings(cfg, task.name)
    return content_key({"v": TEACHER_VERSION, "kind": "refined", "from": multitask_key,
                        "task": task.name, "data": data_fingerprint,
                        "cfg": training_settings(cfg)})


def refine_settings(cfg: TeacherConfig, task: str) -> TeacherConfig:
    """The task's own teacher settings, with ``refine_epochs`` epochs."""
    return dataclasses.replace(cfg.for_task(task), epochs=cfg.refine_epochs)


def refine_task_teacher(cfg: TeacherConfig, task: TaskSpec, train: list[Example],
                        dev: list[Example], work_root: str | Path, data_fingerprint: str,
                        multitask: TeacherResult, log=print) -> TeacherResult:
    """MT-DNN's second stage: a copy of the multi-task teacher's encoder and ``task``'s head,
    fine-tuned on ``task`` alone for ``teacher.refine_epochs`` epochs (best epoch on dev kept),
    saved (or reused) as a single-task teacher that records where it came from."""
    rcfg = refine_settings(cfg, task.name)
    key = refined_teacher_key(multitask.key, cfg, task, data_fingerprint)

    def init(_partial: Path):
        return _init_from_multitask(multitask.path, task)

    return _train_task_teacher(rcfg, task, train, dev, Path(work_root) / "teachers" / key, key,
                               init, {"base_model": cfg.model, "refined_from": str(multitask.path),
                                      "refined_from_key": multitask.key},
                               f"refining {task.name}", log)


def _init_from_multitask(path: str | Path, task: TaskSpec):
    """A sequence classifier holding the multi-task teacher's encoder (and pooler) and the
    task's head: the same function as the multi-task teacher's ``head=task``."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    kwargs = {"num_labels": task.num_outputs}
    if task.is_regression:
        kwargs["problem_type"] = "regression"
    model = AutoModelForSequenceClassification.from_pretrained(str(path), **kwargs)
    heads = load_file(str(Path(path) / "heads.safetensors"))
    head = {k.split(".", 1)[1]: v for k, v in heads.items() if k.split(".", 1)[0] == task.name}
    if not head:
        raise TeacherError(f"multi-task teacher {path} has no head for {task.name}")
    model.classifier.load_state_dict(head)
    return model, AutoTokenizer.from_pretrained(str(path))


def _train_task_teacher(cfg: TeacherConfig, task: TaskSpec, train: list[Example],
                        dev: list[Example], final: Path, key: str, init, origin: dict,
                        desc: str, log=print) -> TeacherResult:
    """The single-task teacher loop: reuse ``final`` when complete, else ``init(partial)`` ->
    (model, tokenizer), fine-tune (resumable), evaluate, save in one go."""
    t0 = time.time()
    if (final / "metrics.json").is_file():
        metrics = json.loads((final / "metrics.json").read_text())
        log(f"[teacher] reusing {final} (dev {task.main_metric}={metrics.get(task.main_metric, float('nan')):.4f})")
        return TeacherResult(final, key, metrics, True, time.time() - t0)
    _check_base_model(cfg.model)
    precision = training_precision(cfg)
    partial = final.parent / ".partial" / key  # the checkpoint; scratch for a random base
    partial.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model, tokenizer = init(partial)
    examples = take_subset(train, cfg.max_train_examples, cfg.seed)
    log(f"[teacher] {desc}: {origin.get('refined_from', cfg.model)}, {len(examples)} examples, "
        f"{cfg.epochs} epochs, batch {cfg.batch_size}, max_length {cfg.max_length}, "
        f"{precision}")
    plan = single_task_plan(examples, cfg)
    run = FinetuneRun(partial, cfg, len(plan), math.ceil(len(examples) / cfg.batch_size),
                      desc, log)
    info = run.fit(model, plan, _single_task_step(tokenizer, examples, task, cfg, precision),
                   lambda m: evaluate_teacher(m, tokenizer, dev, task, cfg.max_length,
                                              precision=precision))
    metrics = evaluate_teacher(model, tokenizer, dev, task, cfg.max_length, precision=precision)
    log("[teacher] dev: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    # written in one go once trained: a kill during training leaves the checkpoint only
    with atomic_dir(final) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / HEADS_FILE).write_text(json.dumps({"multitask": False,
                                                  "heads": {task.name: task.num_outputs}}))
        (tmp / "teacher_config.json").write_text(json.dumps(
            {**origin, "task": task.name, "config": asdict(cfg)}, indent=1))
        write_train_records(tmp, info)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1))  # written last
    run.discard()
    return TeacherResult(final, key, metrics, False, time.time() - t0)


def _check_base_model(name: str) -> None:
    if name.startswith("random:"):
        return
    p = Path(name)
    looks_local = name.startswith((".", "/", "~")) or p.exists()
    if looks_local and not (p / "config.json").is_file():
        raise TeacherError(f"teacher model {name} does not exist or has no config.json; pass a "
                           "Hugging Face model dir or hub name (teacher.model=...)")


def _init_model(cfg: TeacherConfig, task: TaskSpec, train: list[Example], tmp: Path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(cfg.seed)
    if cfg.model.startswith("random:"):
        src = random_base(cfg, train, tmp, task.num_outputs, task.name)
        model = AutoModelForSequenceClassification.from_pretrained(str(src))
        tokenizer = AutoTokenizer.from_pretrained(str(src))
        shutil.rmtree(src)
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(cfg.model)
            kwargs = {"num_labels": task.num_outputs}
            if task.is_regression:
                kwargs["problem_type"] = "regression"
            model = AutoModelForSequenceClassification.from_pretrained(cfg.model, **kwargs)
        except OSError as e:
            raise TeacherError(f"cannot load teacher model {cfg.model!r}: {e}. Offline? Point "
                               "teacher.model at a local HF directory") from None
        except (ValueError, KeyError) as e:
            raise TeacherError(f"{cfg.model!r} is not a classifier-compatible encoder: {e}") from None
    return model, tokenizer


def random_base(cfg: TeacherConfig, train: list[Example], tmp: Path, num_labels: int = 2,
                head_name: str = "default") -> Path:
    """For ``teacher.model=random:*``: a tiny random BERT under ``tmp/_init`` whose WordPiece
    vocabulary is the training texts' words (the caller loads it, then removes the dir)."""
    words = sorted({w for e in train for t in (e.text_a, e.text_b) if t for w in tokenize(t)})
    return create_random_teacher(tmp / "_init", words, num_labels, head_name, seed=cfg.seed,
                                 max_position=max(cfg.max_length, 128))


def _encode(tokenizer, batch: list[Example], max_length: int):
    a = [e.text_a for e in batch]
    b = [e.text_b for e in batch] if batch[0].text_b is not None else None
    return tokenizer(a, b, truncation=True, max_length=max_length, padding=True,
                     return_tensors="pt")


def shuffled_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch of a teacher's batches: indices shuffled, grouped by length within windows of 50
    batches so padding stays small, the batches shuffled (both shuffles by ``rng``)."""
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    batches = length_grouped_batches(idx, lengths, batch_size, window=50)
    rng.shuffle(batches)
    return batches


def optimizer_and_schedule(model, cfg: TeacherConfig, total: int):
    """AdamW with linear warm-up over ``warmup_ratio`` of ``total`` steps, then linear decay."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = int(total * cfg.warmup_ratio)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / max(1, warm) if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    return opt, sched


def single_task_plan(examples: list[Example], cfg: TeacherConfig) -> list[list[int]]:
    """Every step's batch (example indices), fixed by the seed: length-grouped batches, epoch
    after epoch, ``epochs`` (fractions allowed) in all. Computed in full up front, so a resumed
    run takes the same batches from its checkpoint's step on."""
    rng = random.Random(cfg.seed)
    lengths = [len(e.text_a) + len(e.text_b or "") for e in examples]
    total = max(1, int(round(math.ceil(len(examples) / cfg.batch_size) * cfg.epochs)))
    plan: list[list[int]] = []
    while len(plan) < total:
        plan += shuffled_batches(lengths, cfg.batch_size, rng)
    return plan[:total]


def _single_task_step(tokenizer, examples: list[Example], task: TaskSpec, cfg: TeacherConfig,
                      precision: str):
    """One step's loss: forward pass (and loss) under ``precision`` autocast."""
    def step(model, batch_idx: list[int]) -> torch.Tensor:
        batch = [examples[i] for i in batch_idx]
        enc = _encode(tokenizer, batch, cfg.max_length)
        if task.is_regression:
            labels = torch.tensor([float(e.label) for e in batch])
        else:
            labels = torch.tensor([int(e.label) for e in batch])
        with autocast(precision, "cpu"):
            out = model(**enc, labels=labels)
        return out.loss.float()
    return step


RUN_FIELDS = ("seconds", "resumed_at")  # how the run went: RUN_RECORD_FILE, not the identity


def write_train_records(path: Path, info: dict) -> None:
    """Save :meth:`FinetuneRun.fit`'s record in a teacher dir: what the training did in
    ``TRAIN_INFO_FILE``, how long it took and where it resumed in ``RUN_RECORD_FILE``."""
    (path / TRAIN_INFO_FILE).write_text(json.dumps(
        {k: v for k, v in info.items() if k not in RUN_FIELDS}, indent=1))
    (path / RUN_RECORD_FILE).write_text(json.dumps(
        {k: info[k] for k in RUN_FIELDS if k in info}, indent=1))


def train_seconds(path: str | Path) -> float | None:
    """A saved teacher's fine-tuning seconds, summed over the calls that trained it; None when
    the teacher predates that record. Teachers saved before the run record kept the seconds in
    ``TRAIN_INFO_FILE``."""
    for name in (RUN_RECORD_FILE, TRAIN_INFO_FILE):
        f = Path(path) / name
        if f.is_file() and "seconds" in (rec := json.loads(f.read_text())):
            return float(rec["seconds"])
    return None


class FinetuneRun:
    """The fine-tuning loop of both teacher stages, resumable from a checkpoint.

    ``fit`` runs the steps of a fixed plan (``plan[i]`` is step i's batch): loss, backward pass
    and optimizer in fp32, gradients clipped at 1.0. After each epoch (``steps_per_epoch``
    steps) it evaluates on dev and, with ``keep_best_epoch``, remembers the best weights; at the
    end the model holds those. Every ``checkpoint_minutes`` and after each epoch it writes
    ``<partial>/checkpoint.pt`` atomically: weights, optimizer, schedule, step, the torch RNG,
    the best weights so far and the seconds spent. A killed run called again with the same
    teacher key resumes from it and takes the same batches; ``discard`` removes it once the
    teacher is saved. Progress: a bar on a terminal, else a line through ``log`` at most every
    ``every_s`` seconds (percent, rate, time left, loss).
    """

    def __init__(self, partial: Path, cfg: TeacherConfig, total: int, steps_per_epoch: int,
                 desc: str, log=print, every_s: float = 30.0):
        self.partial, self.cfg, self.total, self.desc, self.log = partial, cfg, total, desc, log
        self.every_s = every_s
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.path = partial / "checkpoint.pt"

    def fit(self, model, plan: list, step_fn, evaluate) -> dict:
        assert len(plan) == self.total
        opt, sched = optimizer_and_schedule(model, self.cfg, self.total)
        state = {"step": 0, "seconds": 0.0, "best_score": None, "best_step": None,
                 "best_model": None, "history": [], "resumed_at": []}
        if self.path.is_file():
            state = self._load(model, opt, sched)
            state["resumed_at"].append(state["step"])
            self.log(f"[teacher] {self.desc}: resuming at step {state['step']} of {self.total} "
                     f"from {self.path} ({state['seconds']:.0f} s spent before)")
        model.train()
        t_start, t_saved = time.perf_counter(), time.perf_counter()
        spent0, first = state["seconds"], state["step"]
        meter = StageProgress("teacher", self.desc, self.total, unit="steps", done=first,
                              log=self.log, every_s=self.every_s, bar=True)
        for step in range(first, self.total):
            loss = step_fn(model, plan[step])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            state["step"] = step + 1
            meter.update(1, note=f"loss {loss.item():.4f}")
            epoch_end = (step + 1) % self.steps_per_epoch == 0 or step + 1 == self.total
            if epoch_end:
                self._evaluate(model, evaluate, state)
            due = time.perf_counter() - t_saved >= 60 * self.cfg.checkpoint_minutes
            if (epoch_end or due) and step + 1 < self.total:
                state["seconds"] = spent0 + time.perf_counter() - t_start
                self._save(model, opt, sched, state)
                t_saved = time.perf_counter()
            faults.point("teacher_finetune")  # after this step's checkpoint, if it wrote one
        meter.close()  # the line below closes the stage
        if self.cfg.keep_best_epoch and state["best_model"] is not None:
            model.load_state_dict(state["best_model"])
        model.eval()
        seconds = spent0 + time.perf_counter() - t_start
        done = max(1, self.total - first)
        self.log(f"[teacher] {self.desc}: {self.total} steps, "
                 f"{(time.perf_counter() - t_start) / done:.3f} s/step in this call"
                 + (f"; kept the weights of step {state['best_step']}" if
                    self.cfg.keep_best_epoch and state["best_step"] else ""))
        return {"steps": self.total, "seconds": seconds, "best_step": state["best_step"],
                "history": state["history"], "resumed_at": state["resumed_at"]}

    def _evaluate(self, model, evaluate, state: dict) -> None:
        model.eval()
        metrics = evaluate(model)
        model.train()
        score = float(metrics["score"])
        state["history"].append({"step": state["step"], "score": score})
        self.log(f"[teacher] {self.desc}: step {state['step']}/{self.total}, dev score {score:.4f}")
        if self.cfg.keep_best_epoch and (state["best_score"] is None
                                         or score > state["best_score"]):
            state["best_score"], state["best_step"] = score, state["step"]
            state["best_model"] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def _save(self, model, opt, sched, state: dict) -> None:
        with atomic_file(self.path) as f:
            torch.save({**state, "total": self.total, "model": model.state_dict(),
                        "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "rng": torch.get_rng_state()}, f)

    def _load(self, model, opt, sched) -> dict:
        try:
            ck = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a damaged checkpoint: start over, say so
            self.log(f"[teacher] {self.desc}: checkpoint {self.path} unreadable ({e}); "
                     "starting over")
            return {"step": 0, "seconds": 0.0, "best_score": None, "best_step": None,
                    "best_model": None, "history": [], "resumed_at": []}
        if ck["total"] != self.total:
            raise TeacherError(f"checkpoint {self.path} is for {ck['total']} steps, this run "
                               f"plans {self.total}: remove it to start over")
        model.load_state_dict(ck.pop("model"))
        opt.load_state_dict(ck.pop("opt"))
        sched.load_state_dict(ck.pop("sched"))
        torch.set_rng_state(ck.pop("rng"))
        ck.pop("total")
        return ck

    def discard(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)
        with contextlib.suppress(OSError):  # the shared ".partial" dir, once empty
            self.partial.parent.rmdir()


@torch.inference_mode()
def predict_logits(model, tokenizer, examples: list[Example], max_length: int,
                   batch_size: int = 128, head: str | None = None,
                   precision: str = "fp32") -> np.ndarray:
    """Logits in input order; ``head`` names the task head of a multi-task teacher;
    ``precision``: a resolved one (the model runs on the CPU under its autocast)."""
    model.eval()
    out = [None] * len(examples)
    for idx in length_sorted_batches([len(e.text_a) + len(e.text_b or "") for e in examples],
                                     batch_size):
        enc = _encode(tokenizer, [examples[i] for i in idx], max_length)
        with autocast(precision, "cpu"):
            raw = model(**enc, head=head) if head is not None else model(**enc).logits
        logits = raw.float().numpy()
        for j, i in enumerate(idx):
            out[i] = logits[j]
    return np.stack(out) if out else np.zeros((0, 1), np.float32)


def evaluate_teacher(model, tokenizer, dev: list[Example], task: TaskSpec,
                     max_length: int, head: str | None = None,
                     precision: str = "fp32") -> dict[str, float]:
    logits = predict_logits(model, tokenizer, dev, max_length, head=head, precision=precision)
    labels = np.array([e.label for e in dev], dtype=np.float64)
    return compute_metrics(task, logits, labels)
