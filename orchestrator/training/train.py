"""Student training on Ray Train: the per-worker loop and the TorchTrainer that runs it.

One loop serves single-task KD (Tang et al.) and multi-task KD (MKD): every step draws a task by
the mixture (a single task draws itself), takes a batch of it, and fits that task's teacher logits
with the loss from ``students.losses``. Each epoch (or each ``1 / train.evals_per_epoch`` of one):
evaluate on dev, report metrics to Ray Train (and through it to Tune), log them to the trial's
MLflow run, and checkpoint. On-demand bundles carry texts instead of teacher logits: the loop
fetches them from the teacher pool as batches need them
(:mod:`orchestrator.teachers.on_demand_labels`).
"""
from __future__ import annotations

import contextlib
import json
import math
import tempfile
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orchestrator.config import ExperimentConfig, build_config, resolved_embeddings
from orchestrator.runtime import faults
from orchestrator.runtime.progress import duration
from orchestrator.teachers.batching import length_grouped_batches, length_sorted_batches
from orchestrator.teachers.on_demand_labels import merge_stats
from orchestrator.training.bundle import TaskTensors, load_embeddings, read_meta, read_split
from orchestrator.training.mixture import TaskSampler, mixture_weights
from orchestrator.training.trial_checkpoints import TrialCheckpoints
from students.factory import build_student, count_parameters
from students.losses import distillation_loss
from tasks.metrics import compute_metrics
from tasks.registry import TaskSpec

MODEL_FILE = "model.safetensors"
REPORT = "report"  # the report count in what a trial reports: the time of Tune's early stopping
STUDENT_FILE = "student.json"
RESUME_FILE = "resume.pt"  # torch RNG, batch streams, stage-2 optimizers


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
    """The teacher whose layers seed a Transformer student: the bundle's first task's teacher
    (in MKD every task points at the same multi-task teacher)."""
    teachers = meta.get("teachers") or {}
    if not teachers:
        raise ValueError("student.init_from_teacher is set but the bundle names no teacher")
    return next(iter(teachers.values()))["path"]


def build_for_training(cfg: ExperimentConfig, meta: dict, embeddings: np.ndarray | None):
    """A trial's fresh student, and the meta to save with it.

    With ``student.arch=transformer`` and ``student.init_from_teacher`` other than ``none``, the
    student copies the teacher's embeddings, pooler and the chosen layers (``first``, ``even`` or
    ``"0,2,4"``; :func:`students.transformer.init_from_bert`). Its position table takes the
    teacher's size when that is smaller than the default; the saved meta records it so
    :func:`load_student` rebuilds the same shape. Returns ``(model, meta, teacher layers used)``."""
    s = cfg.student
    if s.arch != "transformer" or s.init_from_teacher == "none":
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
# the Ray Train worker loop

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
              str(out_dir / MODEL_FILE))
    (out_dir / STUDENT_FILE).write_text(json.dumps({
        "student": asdict(cfg.student), "meta": meta, **(extra or {})}, indent=1))
    if (bundle / "vocab.json").is_file():
        shutil.copy(bundle / "vocab.json", out_dir / "vocab.json")
    if (bundle / "tokenizer").is_dir():
        shutil.copytree(bundle / "tokenizer", out_dir / "tokenizer", dirs_exist_ok=True)


def load_student(ckpt_dir: str | Path, task: str | None = None):
    """Rebuild a saved student (weights via safetensors, never pickle). ``task``: the student
    MKD's stage 2 fine-tuned for that task (``model-<task>.safetensors``), when it has one."""
    from orchestrator.config import from_dict, StudentConfig
    from safetensors.torch import load_file

    d = Path(ckpt_dir)
    for f in (MODEL_FILE, STUDENT_FILE):
        if not (d / f).is_file():
            raise FileNotFoundError(f"student dir {d} lacks {f}: the run's artifacts are incomplete")
    info = json.loads((d / STUDENT_FILE).read_text())
    cfg = ExperimentConfig(student=from_dict(StudentConfig, info["student"]))
    model = build_from_meta(cfg, info["meta"], None)
    weights = d / MODEL_FILE
    if task is not None:
        if task not in info.get("finetuned_tasks", []):
            raise FileNotFoundError(f"student dir {d} has no stage-2 student for task {task!r} "
                                    f"(fine-tuned: {info.get('finetuned_tasks', [])})")
        weights = d / f"model-{task}.safetensors"
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    return model, info


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


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def _report(report: int, metrics: dict, state: dict, model, optimizer, cfg: ExperimentConfig,
            meta: dict, bundle: Path, rank: int, client, run_id: str | None,
            per_task: dict | None = None, checkpoints: TrialCheckpoints | None = None,
            resume: dict | None = None) -> None:
    """Log report number ``report`` (0-based; the epoch when there is one report per epoch) to
    MLflow (rank 0, as step ``report + 1``), checkpoint (rank 0) and report to Ray Train, with
    ``report`` (1-based: the clock of Tune's early stopping, which a resumed run carries on where
    Tune's own iteration count would start again). ``checkpoints``: in a trial's own process
    (local mode), where the checkpoint goes; the metrics then go to Tune directly."""
    import ray.train

    if client is not None:
        from orchestrator.runtime.tracking import log_metrics
        # the scores first: MLflow lists a run's metrics in the order first logged
        first = ("best_dev_score", "dev_score", "latency_ms")
        log_metrics(client, run_id, {**{k: metrics[k] for k in first if k in metrics},
                                     **metrics}, step=report + 1)
    metrics = {**metrics, REPORT: report + 1}
    with tempfile.TemporaryDirectory() as d:
        if rank != 0:
            ray.train.report(metrics)
            return
        save_student(model, Path(d), cfg, meta, bundle,
                     {"finetuned_tasks": sorted(per_task)} if per_task else None)
        if per_task:  # stage 2: each task's own fine-tuned student
            from safetensors.torch import save_file
            for t, m in per_task.items():
                save_file({k: v.detach().cpu().contiguous()
                           for k, v in _unwrap(m).state_dict().items()},
                          str(Path(d) / f"model-{t}.safetensors"))
        if optimizer is not None:
            torch.save(optimizer.state_dict(), Path(d) / "optimizer.pt")
        if resume is not None:
            torch.save(resume, Path(d) / RESUME_FILE)
        (Path(d) / "train_state.json").write_text(json.dumps({"report": report, **state}))
        (Path(d) / "metrics.json").write_text(json.dumps(metrics))
        if checkpoints is None:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
            return
        metrics["checkpoint_path"] = checkpoints.save(d, report, metrics.get("dev_score", math.nan))
    import ray.tune  # in a Tune trial, ray.train's report and context are Tune's to give

    ray.tune.report(metrics)


def on_demand_labels(meta: dict, bundle: Path, train: dict[str, TaskTensors], labeler,
                     work_root: str) -> dict:
    """For an on-demand bundle: each task's :class:`OnDemandLogits`, installed as the split's
    ``logits`` (rows NaN until fetched); ``{}`` for a bundle with precomputed logits."""
    if meta.get("soft_labels", "precomputed") != "on_demand":
        return {}
    if labeler is None:
        raise ValueError(f"bundle {bundle} has no teacher logits (train.soft_labels=on_demand) "
                         "and this run was given no teacher pool to ask: start the trainer with "
                         "pipeline.on_demand_labeler(cfg, teachers)")
    from orchestrator.teachers.on_demand_labels import OnDemandLogits
    from orchestrator.training.bundle import read_texts

    out = {}
    for t, data in train.items():
        teacher = meta["teachers"][t]
        texts_a, texts_b = read_texts(bundle / f"texts-{t}.parquet")
        root = str(Path(work_root) / "soft_labels")
        # the fidelity gate (reduced precision only; once per teacher: its verdict is kept
        # under the root) decides the precision, hence the cache, the labels go to
        labeler.settle_precision(texts_a, texts_b, teacher["head"], teacher["max_length"], root)
        cache = labeler.cache(root, teacher["head"], teacher["max_length"])
        out[t] = OnDemandLogits(texts_a, texts_b, labeler.resolve_head(teacher["head"])[1],
                                labeler, cache, teacher["head"], teacher["max_length"])
        data.logits = out[t].values
    return out


def train_loop_per_worker(loop_cfg: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    cfg = build_config(loop_cfg["experiment"])
    tc = cfg.train
    # in a trial's own process (local mode), checkpoints are kept here and reports go to Tune
    checkpoints = (TrialCheckpoints(**loop_cfg["checkpoints"]) if loop_cfg.get("checkpoints")
                   else None)
    if checkpoints is None:
        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
    else:
        rank, world = 0, 1
    torch.set_num_threads(tc.torch_threads or max(1, int(tc.cpus_per_worker)))
    torch.manual_seed(tc.seed)
    precision = student_precision(tc)
    bundle = Path(loop_cfg["bundle"])
    meta, train, dev, specs = load_bundle(bundle, loop_cfg.get("tasks"))
    model, meta, init_layers = build_for_training(cfg, meta, load_embeddings(bundle))
    if rank == 0 and init_layers is not None:
        print(f"[train] student layers 0..{len(init_layers) - 1} start from teacher layers "
              f"{init_layers}")

    probe = {}
    if rank == 0:
        from orchestrator.training.probe import student_latency_ms
        first = next(iter(specs))
        pair = meta["tasks"][first]["pair"] and meta["encoding"] == "words"
        probe = {"latency_ms": student_latency_ms(model, 1, 32, pair, meta["vocab_size"], first,
                                                  repeats=15),
                 "non_embedding_params": float(count_parameters(model)["non_embedding"]),
                 "params": float(count_parameters(model)["total"])}

    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=tc.lr,
                                 weight_decay=tc.weight_decay)
    start, best, bad_epochs, done = 0, -math.inf, 0, False  # start: the first report to run
    stage1_reports = None  # set once stage 2 has begun: the reports stage 1 made
    resumed_per_task: dict[str, dict] = {}
    resumed: dict = {}
    with checkpoints.local("latest") if checkpoints else contextlib.nullcontext() as kept:
        ckpt = (ray.train.get_checkpoint() if checkpoints is None else
                ray.train.Checkpoint.from_directory(str(kept)) if kept else None)
        if ckpt:  # resume after a worker failure, a pause at a rung, a restored search or report
            from safetensors.torch import load_file
            with ckpt.as_directory() as d:
                model.load_state_dict(load_file(str(Path(d) / MODEL_FILE)))
                state = json.loads((Path(d) / "train_state.json").read_text())
                opt_path = Path(d) / "optimizer.pt"
                if opt_path.is_file():
                    optimizer.load_state_dict(torch.load(opt_path, weights_only=True))
                resumed_per_task = {t: load_file(str(Path(d) / f"model-{t}.safetensors"))
                                    for t in specs
                                    if (Path(d) / f"model-{t}.safetensors").is_file()}
                if (Path(d) / RESUME_FILE).is_file():
                    resumed = torch.load(Path(d) / RESUME_FILE, weights_only=True)
            # the last report done ("epoch" in checkpoints written before several reports per
            # epoch)
            start = state.get("report", state.get("epoch")) + 1
            best, bad_epochs = state["best"], state["bad_epochs"]
            done = bool(state.get("done"))
            stage1_reports = state.get("stage1_reports")
    if done:  # every report was made before this start: nothing is trained twice
        return
    if resumed.get("torch_rng") is not None:
        torch.set_rng_state(resumed["torch_rng"])
    if world > 1:
        model = ray.train.torch.prepare_model(
            model, parallel_strategy_kwargs={"find_unused_parameters": len(specs) > 1})

    sizes = {t: len(d) for t, d in train.items()}
    probs = mixture_weights(sizes, tc.mixture if len(sizes) > 1 else "proportional",
                            tc.mixture_tau, tc.mixture_weights)
    labels = on_demand_labels(meta, bundle, train, loop_cfg.get("labeler"), cfg.work_root)
    evals = tc.evals_per_epoch
    # on demand, labels are fetched a window ahead: large enough for efficient teacher calls,
    # small next to one report's share of the data, so an early stop saves most of the rest
    streams = {t: TaskStream(d, np.arange(rank, len(d), world), tc.batch_size, tc.seed + 17 * rank,
                             labels.get(t), min(2048, len(d) // (world * evals * 4)))
               for t, d in train.items()}
    for t, st in (resumed.get("streams") or {}).items():
        if t in streams:
            streams[t].restore(st)
    steps = tc.steps_per_epoch or max(1, sum(math.ceil(n / (tc.batch_size * world)) for n in sizes.values()))
    client = None
    if rank == 0 and loop_cfg.get("run_id"):
        from mlflow.tracking import MlflowClient
        client = MlflowClient(loop_cfg["tracking_uri"])
    run_id = loop_cfg.get("run_id")
    # what this start cost before the first step (Tune actor, transfer set, Train workers, model,
    # labels client): logged once per start, so a resumed trial shows what each resume cost
    startup = ({"startup_seconds": time.time() - loop_cfg["started_at"]}
               if loop_cfg.get("started_at") else {})
    if labels:  # on demand: the fidelity gate's figures (reduced-precision labels only)
        startup.update(loop_cfg["labeler"].fidelity_metrics())

    def resume_state(opts: dict | None = None) -> dict:
        return {"torch_rng": torch.get_rng_state(),
                "streams": {t: st.state() for t, st in streams.items()},
                **({"optimizers": {t: o.state_dict() for t, o in opts.items()}} if opts else {})}

    # stage 1: joint distillation, a task drawn by the mixture for each step; ``evals`` reports
    # per epoch (report r ends at epoch (r + 1) / evals), each with dev metrics and a checkpoint;
    # with ``patience``, it ends once that many epochs pass without a better dev score
    stage1 = tc.epochs * evals  # reports of stage 1; stage 2 reports once per epoch
    if stage1_reports is not None:  # resumed in stage 2
        stage1 = stage1_reports
    elif tc.patience is not None and bad_epochs >= tc.patience * evals:
        stage1 = start  # resumed after stage 1 stopped early, before stage 2 reported
    for r in range(start, stage1):
        t0 = time.time()
        k = r % evals
        seg = steps * (k + 1) // evals - steps * k // evals  # this report's share of the epoch
        # the draws of report r depend on r only, so a resumed run draws what it would have
        draws = TaskSampler(probs, seed=tc.seed + 1000 * r).draw(max(1, seg))
        loss = train_steps(model, optimizer, streams, draws, specs, tc, precision)
        seconds = time.time() - t0
        # mid-epoch: trained, not yet reported (a report may pause the trial at a rung)
        faults.point("trial_epoch")
        faults.point("resumed_trial" if start > 0 else "trial")
        for lab in labels.values():  # before the report: a stopped trial keeps what it paid for
            lab.flush()
        metrics = {"epoch": r + 1 if evals == 1 else round((r + 1) / evals, 6), "train_loss": loss,
                   "epoch_seconds": seconds, **evaluate(_unwrap(model), dev, specs), **probe,
                   **merge_stats(labels), **(startup if r == start else {})}
        if tc.finetune_epochs > 0:
            metrics["stage"] = 1
        improved = metrics["dev_score"] > best
        best = max(best, metrics["dev_score"])
        bad_epochs = 0 if improved else bad_epochs + 1
        metrics["best_dev_score"] = best
        stop = tc.patience is not None and bad_epochs >= tc.patience * evals
        last = (stop or r + 1 == stage1) and tc.finetune_epochs <= 0
        if rank == 0:
            _progress(r, stage1, tc, metrics, bad_epochs, stop)
        _report(r, metrics, {"best": best, "bad_epochs": bad_epochs, "done": last}, model,
                optimizer, cfg, meta, bundle, rank, client, run_id, checkpoints=checkpoints,
                resume=resume_state())
        faults.point("trial_reported")  # this report checkpointed: a resume starts after it
        if stop:
            stage1 = r + 1  # stage 2 numbers its reports on from here
            break

    # stage 2 (MKD, optional): each task fine-tunes its own copy of the student (shared layers +
    # its head) on its transfer set alone; reported as further epochs, metrics per task as before
    if tc.finetune_epochs <= 0:
        return
    per_task = finetune_copies(_unwrap(model), specs, tc, world, resumed_per_task,
                               resumed.get("optimizers"))
    for r in range(max(start, stage1), stage1 + tc.finetune_epochs):
        epoch = stage1 // evals + r - stage1  # stage 1 may have stopped early
        t0 = time.time()
        losses = {}
        for t, (m, opt) in per_task.items():
            n = max(1, math.ceil(sizes[t] / (tc.batch_size * world)))  # one pass over the task
            losses[t] = train_steps(m, opt, streams, [t] * min(n, tc.steps_per_epoch or n),
                                    specs, tc, precision)
        for lab in labels.values():
            lab.flush()
        scores = evaluate_per_task({t: _unwrap(m) for t, (m, _) in per_task.items()}, dev, specs)
        metrics = {"epoch": epoch + 1, "stage": 2, "train_loss": float(np.mean(list(losses.values()))),
                   **{f"{t}_train_loss": v for t, v in losses.items()},
                   "epoch_seconds": time.time() - t0, **scores, **probe, **merge_stats(labels)}
        best = max(best, metrics["dev_score"])
        metrics["best_dev_score"] = best
        _report(r, metrics, {"best": best, "bad_epochs": bad_epochs, "stage1_reports": stage1,
                             "done": r + 1 == stage1 + tc.finetune_epochs}, model, None, cfg,
                meta, bundle, rank, client, run_id,
                per_task={t: m for t, (m, _) in per_task.items()}, checkpoints=checkpoints,
                resume=resume_state({t: o for t, (_, o) in per_task.items()}))


def _progress(r: int, stage1: int, tc, metrics: dict, bad_epochs: int, stop: bool) -> None:
    """One line per report: where stage 1 stands and, at this report's pace, the most time left
    (patience may stop it sooner)."""
    left = stage1 - r - 1 + tc.finetune_epochs
    if tc.patience is not None:
        left = min(left, tc.patience * tc.evals_per_epoch - bad_epochs + tc.finetune_epochs)
    eta = 0 if stop else left * metrics["epoch_seconds"]
    print(f"[train] report {r + 1}/{stage1} (epoch {metrics['epoch']}): dev score "
          f"{metrics['dev_score']:.4f}, best {metrics['best_dev_score']:.4f}, "
          f"{metrics['epoch_seconds']:.0f} s" + (", patience reached" if stop else
                                                  f"; at most {left} more, about "
                                                  f"{duration(eta)} at this pace"), flush=True)


def finetune_copies(joint, specs: dict[str, TaskSpec], tc, world: int,
                    resumed: dict[str, dict] | None = None,
                    optimizers: dict[str, dict] | None = None) -> dict[str, tuple]:
    """Stage 2: per task, a copy of the jointly distilled student (or its checkpointed state)
    and an optimizer over its parameters (fresh, or its checkpointed state)."""
    import copy

    out = {}
    for t in specs:
        m = copy.deepcopy(joint)
        if resumed and t in resumed:
            m.load_state_dict(resumed[t])
        if world > 1:
            import ray.train.torch
            m = ray.train.torch.prepare_model(
                m, parallel_strategy_kwargs={"find_unused_parameters": True})
        opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=tc.lr,
                               weight_decay=tc.weight_decay)
        if optimizers and t in optimizers:
            opt.load_state_dict(optimizers[t])
        out[t] = (m, opt)
    return out


def evaluate_per_task(models: dict[str, Any], dev: dict[tuple[str, str], TaskTensors],
                      specs: dict[str, TaskSpec]) -> dict[str, float]:
    """:func:`evaluate` with each task scored by its own model; ``dev_score`` = mean of tasks."""
    out: dict[str, float] = {}
    scores = []
    for t, m in models.items():
        res = evaluate(m, {k: v for k, v in dev.items() if k[0] == t}, {t: specs[t]})
        scores.append(res.pop("dev_score"))
        out.update({k: v for k, v in res.items() if len(specs) == 1 or not k.startswith("dev_")})
    out["dev_score"] = float(np.mean(scores)) if scores else float("nan")
    return out


def make_trainer(cfg: ExperimentConfig, bundle: str | Path, run_id: str | None,
                 tracking_uri: str | None, storage_path: str, name: str,
                 callbacks: list | None = None, tasks: list[str] | None = None, labeler=None,
                 started_at: float | None = None):
    """A TorchTrainer for one student: workers and resources from ``cfg.train``. ``labeler``:
    the teacher pool's client for an on-demand bundle (:func:`pipeline.on_demand_labeler`).
    ``started_at``: when the caller's run began (``time.time()``); the first report of each
    start of the workers then holds ``startup_seconds``, the time until training began.

    ``train.num_workers: 0`` trains in this process (Ray Train's local mode), which must be a
    Tune trial holding the worker's resources (:func:`ray_runtime.trial_resources`): no
    controller or worker actors to start, each report goes to Tune directly, and the
    checkpoints to :class:`TrialCheckpoints` under ``storage_path/name``."""
    import ray.train
    from ray.train.torch import TorchTrainer

    tc = cfg.train
    local = tc.num_workers == 0
    if local:
        from ray.tune.trainable.trainable_fn_utils import _in_tune_session

        if not _in_tune_session():
            raise ValueError("train.num_workers=0 trains inside a Tune trial's own process, so "
                             "it is for searches; here set train.num_workers to 1 or more")
    scaling = ray.train.ScalingConfig(
        num_workers=tc.num_workers, use_gpu=tc.use_gpu and not local,
        resources_per_worker=None if local else
        {"CPU": tc.cpus_per_worker, **({"GPU": 1} if tc.use_gpu else {})})
    run_config = ray.train.RunConfig(
        name=name, storage_path=storage_path, callbacks=callbacks or [],
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute="dev_score", checkpoint_score_order="max"),
        failure_config=ray.train.FailureConfig(max_failures=1))
    return TorchTrainer(
        train_loop_per_worker,
        # the student records the embeddings file its bundle was built with (not "glove")
        train_loop_config={"experiment": resolved_embeddings(cfg).to_dict(),
                           "bundle": str(bundle), "run_id": run_id,
                           "tracking_uri": tracking_uri, "tasks": tasks, "labeler": labeler,
                           "started_at": started_at,
                           "checkpoints": {"storage": storage_path, "name": name} if local else None},
        scaling_config=scaling, run_config=run_config)
