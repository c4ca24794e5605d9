"""The training loop of one Ray Train worker, in the steps it runs top to bottom.

:func:`train_loop_per_worker` is the whole loop; each step below it is a function of its own that
runs without Ray (``tests/test_train_steps.py``):

1. :func:`setup`: the bundle's data, a fresh student (seeded by ``train.seed``), its optimizer,
   its latency and size (rank 0).
2. :func:`resume`: the last checkpoint, if any, restored into the student and its optimizer,
   with where training stood (:class:`Progress`), the torch RNG and the batch streams' states.
   A checkpoint marked ``done`` ends the loop there: nothing is trained twice.
3. :func:`batches`: the endless batch stream of each task (restored where the checkpoint left
   them), the MKD mixture, and on-demand teacher labels when the bundle has none.
4. :func:`run_stage1`: joint distillation: every step draws a task by the mixture (a single task
   draws itself), takes a batch of it and fits that task's teacher logits with the loss from
   ``students.losses``. ``train.evals_per_epoch`` reports per epoch; with ``train.patience`` it
   stops once that many epochs pass without a better dev score (counted after
   ``train.min_epochs``). The caller's ``pause_after`` stops it, unfinished, after that many
   reports (a grid's rung); a later start goes on.
5. :func:`run_stage2` (MKD, ``train.finetune_epochs`` > 0): each task fine-tunes its own copy of
   the student; reported as further epochs.

Each report goes through a :class:`Reporter`: the metrics to the run's MLflow run (rank 0), a
checkpoint (rank 0, :func:`write_checkpoint`), and both on to Ray: to Ray Train from its workers
(:class:`ToTrain`), or from the caller's own process (local mode, :class:`InProcess`: to Tune
in a trial, to Ray Train's local mode in a report; the checkpoint kept by
:class:`TrialCheckpoints`). Where Ray comes in, the thin top function says so:
the worker's rank, the checkpoint to resume, wrapping the model for several workers, the report.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from orchestrator.config import ExperimentConfig, build_config
from orchestrator.runtime import faults
from orchestrator.runtime.progress import duration
from orchestrator.teachers.on_demand_labels import merge_stats
from orchestrator.training import checkpoint as ckpt
from orchestrator.training.bundle import TaskTensors, load_embeddings
from orchestrator.training.mixture import TaskSampler, mixture_weights
from orchestrator.training.train import (REPORT, TaskStream,
                                         build_for_training, evaluate, load_bundle,
                                         save_student, student_precision, train_steps)
from orchestrator.training.trial_checkpoints import TrialCheckpoints
from students.factory import count_parameters
from tasks.registry import TaskSpec


# wraps a model for several workers (Ray Train's prepare_model): (model, find_unused_parameters)
Prepare = Callable[[Any, bool], Any]


def train_loop_per_worker(loop_cfg: dict[str, Any]) -> None:
    """One worker's training, as :func:`distill.make_trainer` starts it (``loop_cfg``: the
    config as a dict, the bundle, the MLflow run, the on-demand labeler, in local mode where the
    checkpoints go)."""
    cfg = build_config(loop_cfg["experiment"])
    # in the caller's own process (local mode: a Tune trial's, a report's), checkpoints are kept
    # here
    checkpoints = (TrialCheckpoints(**loop_cfg["checkpoints"]) if loop_cfg.get("checkpoints")
                   else None)
    rank, world = _rank_and_world() if checkpoints is None else (0, 1)
    w = setup(cfg, loop_cfg["bundle"], loop_cfg.get("tasks"), rank, world)
    with _latest_checkpoint(checkpoints) as ckpt_dir:
        progress = resume(w, ckpt_dir)
    # ``pause_after``: stop, unfinished, once that many reports are made (a rung of a grid
    # whose points are compared after their first reports; the winner is started again)
    pause = loop_cfg.get("pause_after")
    if progress.done or (pause is not None and progress.start >= pause):
        return  # nothing is trained twice
    prepare = _prepare_model if world > 1 else None
    if prepare is not None:
        w.model = prepare(w.model, len(w.specs) > 1)
    labeler = loop_cfg.get("labeler")
    data = batches(w, progress, labeler)
    report = Reporter(w, ToTrain() if checkpoints is None else InProcess(checkpoints),
                      _mlflow_client(rank, loop_cfg), loop_cfg.get("run_id"))
    startup = startup_metrics(loop_cfg.get("started_at"), data.labels, labeler)
    stage1 = run_stage1(w, progress, data, report, startup, until=pause)
    if stage1 is None:  # paused at ``pause_after`` reports: a later start trains on from there
        return
    run_stage2(w, progress, data, stage1, report, prepare)


# ---------------------------------------------------------------------------------------------
# what the steps share

@dataclass
class Worker:
    """What :func:`setup` builds for one worker: its config and place among the workers, the
    bundle's data, and the student with its optimizer (the stages train both in place)."""

    cfg: ExperimentConfig
    rank: int
    world: int
    precision: str  # of the student's forward passes, resolved for this machine
    bundle: Path
    meta: dict
    train: dict[str, TaskTensors]
    dev: dict[tuple[str, str], TaskTensors]
    specs: dict[str, TaskSpec]
    model: Any
    optimizer: torch.optim.Optimizer
    probe: dict[str, float]  # latency and parameters (rank 0): in every report

    @property
    def tc(self):
        return self.cfg.train


@dataclass
class Progress:
    """Where training stands: fresh, or as the last checkpoint left it. The stages update
    ``best`` and ``bad_epochs`` as they report."""

    start: int = 0  # the first report to run
    best: float = -math.inf  # the best dev score so far
    bad_epochs: int = 0  # reports since the best one (patience counts them)
    done: bool = False  # every report was made
    stage1_reports: int | None = None  # set once stage 2 has begun: the reports stage 1 made
    per_task: dict[str, dict] = field(default_factory=dict)  # stage 2: each task's weights
    optimizers: dict[str, dict] | None = None  # stage 2: each task's optimizer state
    streams: dict[str, dict] = field(default_factory=dict)  # each task's batch stream state


@dataclass
class Batches:
    """What the stages draw batches from."""

    streams: dict[str, TaskStream]
    labels: dict  # on-demand labels per task ({} when the bundle holds the logits)
    sizes: dict[str, int]  # training rows per task
    probs: dict[str, float]  # the mixture: the chance of each task per step
    steps: int  # optimizer steps per epoch of stage 1


def unwrap(model):
    """The student inside a model wrapped for several workers."""
    return model.module if hasattr(model, "module") else model


# ---------------------------------------------------------------------------------------------
# 1. setup

def setup(cfg: ExperimentConfig, bundle: str | Path, tasks: list[str] | None = None,
          rank: int = 0, world: int = 1) -> Worker:
    """Threads and seed, the bundle (its ``tasks``, default all), the fresh student, its
    latency and size (rank 0) and its optimizer."""
    tc = cfg.train
    torch.set_num_threads(tc.torch_threads or max(1, int(tc.cpus_per_worker)))
    torch.manual_seed(tc.seed)
    precision = student_precision(tc)
    bundle = Path(bundle)
    meta, train, dev, specs = load_bundle(bundle, tasks)
    model, meta, init_layers = build_for_training(cfg, meta, load_embeddings(bundle))
    if rank == 0 and init_layers is not None:
        print(f"[train] student layers 0..{len(init_layers) - 1} start from teacher layers "
              f"{init_layers}")
    probe = probe_student(model, meta, specs) if rank == 0 else {}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=tc.lr,
                                 weight_decay=tc.weight_decay)
    return Worker(cfg, rank, world, precision, bundle, meta, train, dev, specs, model, optimizer,
                  probe)


def probe_student(model, meta: dict, specs: dict[str, TaskSpec]) -> dict[str, float]:
    """The student's latency (batch 1, 32 tokens) and parameter counts, logged with each report."""
    from orchestrator.training.probe import student_latency_ms

    first = next(iter(specs))
    pair = meta["tasks"][first]["pair"] and meta["encoding"] == "words"
    return {"latency_ms": student_latency_ms(model, 1, 32, pair, meta["vocab_size"], first,
                                             repeats=15),
            "non_embedding_params": float(count_parameters(model)["non_embedding"]),
            "params": float(count_parameters(model)["total"])}


# ---------------------------------------------------------------------------------------------
# 2. resume

def resume(w: Worker, ckpt_dir: Path | None) -> Progress:
    """Restore the checkpoint in ``ckpt_dir`` (None: start afresh) into ``w``'s student and
    optimizer, and the torch RNG as it was at that report (unless the run is done); return where
    training stood, with the stage-2 students' and the batch streams' states for later steps.
    A checkpoint lacking ``resume.pt`` or ``optimizer.pt`` restores what it has."""
    if ckpt_dir is None:
        return Progress()
    from safetensors.torch import load_file

    d = Path(ckpt_dir)
    w.model.load_state_dict(load_file(str(d / ckpt.MODEL)))
    state = json.loads((d / ckpt.STATE).read_text())
    if (d / ckpt.OPTIMIZER).is_file():
        w.optimizer.load_state_dict(torch.load(d / ckpt.OPTIMIZER, weights_only=True))
    per_task = {t: load_file(str(d / ckpt.task_model(t))) for t in w.specs
                if (d / ckpt.task_model(t)).is_file()}
    extra = torch.load(d / ckpt.RESUME, weights_only=True) if (d / ckpt.RESUME).is_file() else {}
    progress = Progress(
        # the last report done ("epoch" in checkpoints written before several reports per epoch)
        start=state.get("report", state.get("epoch")) + 1,
        best=state["best"], bad_epochs=state["bad_epochs"], done=bool(state.get("done")),
        stage1_reports=state.get("stage1_reports"), per_task=per_task,
        optimizers=extra.get("optimizers"), streams=extra.get("streams") or {})
    if not progress.done and extra.get("torch_rng") is not None:
        torch.set_rng_state(extra["torch_rng"])
    return progress


def resume_state(streams: dict[str, TaskStream], optimizers: dict | None = None) -> dict:
    """What ``resume.pt`` holds beside the weights: the torch RNG, each batch stream's state,
    and in stage 2 each task's optimizer."""
    return {"torch_rng": torch.get_rng_state(),
            "streams": {t: st.state() for t, st in streams.items()},
            **({"optimizers": {t: o.state_dict() for t, o in optimizers.items()}}
               if optimizers else {})}


# ---------------------------------------------------------------------------------------------
# 3. batches

def batches(w: Worker, progress: Progress, labeler=None) -> Batches:
    """Each task's batch stream (the worker's shard of its rows, restored to where ``progress``
    left it), the mixture, and the on-demand labels fetched through ``labeler`` when the bundle
    has no teacher logits."""
    tc = w.tc
    sizes = {t: len(d) for t, d in w.train.items()}
    probs = mixture_weights(sizes, tc.mixture if len(sizes) > 1 else "proportional",
                            tc.mixture_tau, tc.mixture_weights)
    labels = on_demand_labels(w.meta, w.bundle, w.train, labeler, w.cfg.work_root)
    evals = tc.evals_per_epoch
    # on demand, labels are fetched a window ahead: large enough for efficient teacher calls,
    # small next to one report's share of the data, so an early stop saves most of the rest
    streams = {t: TaskStream(d, np.arange(w.rank, len(d), w.world), tc.batch_size,
                             tc.seed + 17 * w.rank, labels.get(t),
                             min(2048, len(d) // (w.world * evals * 4)))
               for t, d in w.train.items()}
    for t, st in progress.streams.items():
        if t in streams:
            streams[t].restore(st)
    steps = tc.steps_per_epoch or max(1, sum(math.ceil(n / (tc.batch_size * w.world))
                                             for n in sizes.values()))
    return Batches(streams, labels, sizes, probs, steps)


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


def startup_metrics(started_at: float | None, labels: dict, labeler) -> dict[str, float]:
    """What this start cost before the first step (Tune actor, transfer set, Train workers,
    model, labels client): ``startup_seconds`` since ``started_at``, logged in the first report
    of each start, so a resumed run shows what each resume cost; on demand, the fidelity gate's
    figures (reduced-precision labels only)."""
    out = {"startup_seconds": time.time() - started_at} if started_at else {}
    if labels:
        out.update(labeler.fidelity_metrics())
    return out


# ---------------------------------------------------------------------------------------------
# 4. stage 1

def stage1_reports(tc, progress: Progress) -> int:
    """The reports stage 1 makes in all: ``epochs * evals_per_epoch``; fewer when a resumed run
    finds that patience stopped stage 1 (in stage 2, or before its first report)."""
    if progress.stage1_reports is not None:  # resumed in stage 2
        return progress.stage1_reports
    if tc.patience is not None and progress.bad_epochs >= tc.patience * tc.evals_per_epoch:
        return progress.start  # resumed after stage 1 stopped early, before stage 2 reported
    return tc.epochs * tc.evals_per_epoch


def run_stage1(w: Worker, progress: Progress, data: Batches, report: "Reporter",
               startup: dict | None = None, until: int | None = None) -> int | None:
    """Joint distillation from report ``progress.start`` on: a task drawn by the mixture for
    each step; ``evals_per_epoch`` reports per epoch (report r ends at epoch
    (r + 1) / evals_per_epoch), each with dev metrics and a checkpoint; with ``patience``, it
    ends once that many epochs pass without a better dev score. ``startup`` joins the first
    report's metrics. Returns the reports stage 1 made, from which stage 2 numbers its own, or
    None when it paused: ``until`` reports were made before stage 1 ended."""
    tc = w.tc
    evals = tc.evals_per_epoch
    stage1 = stage1_reports(tc, progress)
    end = stage1 if until is None else min(stage1, until)
    for r in range(progress.start, end):
        t0 = time.time()
        k = r % evals
        seg = data.steps * (k + 1) // evals - data.steps * k // evals  # this report's share
        # the draws of report r depend on r only, so a resumed run draws what it would have
        draws = TaskSampler(data.probs, seed=tc.seed + 1000 * r).draw(max(1, seg))
        loss = train_steps(w.model, w.optimizer, data.streams, draws, w.specs, tc, w.precision)
        seconds = time.time() - t0
        # mid-epoch: trained, not yet reported (a report may pause the trial at a rung)
        faults.point("trial_epoch")
        faults.point("resumed_trial" if progress.start > 0 else "trial")
        for lab in data.labels.values():  # before the report: a stopped trial keeps what it paid for
            lab.flush()
        metrics = {"epoch": r + 1 if evals == 1 else round((r + 1) / evals, 6), "train_loss": loss,
                   "epoch_seconds": seconds, **evaluate(unwrap(w.model), w.dev, w.specs),
                   **w.probe, **merge_stats(data.labels),
                   **((startup or {}) if r == progress.start else {})}
        if tc.finetune_epochs > 0:
            metrics["stage"] = 1
        improved = metrics["dev_score"] > progress.best
        progress.best = max(progress.best, metrics["dev_score"])
        counts = r + 1 > (tc.min_epochs or 0) * evals  # patience counts after min_epochs
        progress.bad_epochs = 0 if improved or not counts else progress.bad_epochs + 1
        metrics["best_dev_score"] = progress.best
        stop = tc.patience is not None and progress.bad_epochs >= tc.patience * evals
        last = (stop or r + 1 == stage1) and tc.finetune_epochs <= 0
        if w.rank == 0:
            _progress_line(r, stage1, tc, metrics, progress.bad_epochs, stop)
        report(r, metrics, {"best": progress.best, "bad_epochs": progress.bad_epochs,
                            "done": last},
               optimizer=w.optimizer, resume=resume_state(data.streams))
        faults.point("trial_reported")  # this report checkpointed: a resume starts after it
        if stop:
            return r + 1  # stage 2 numbers its reports on from here
    return stage1 if end == stage1 else None


def _progress_line(r: int, stage1: int, tc, metrics: dict, bad_epochs: int, stop: bool) -> None:
    """One line per report: where stage 1 stands and, at this report's pace, the most time left
    (patience may stop it sooner)."""
    left = stage1 - r - 1
    if tc.patience is not None:
        evals = tc.evals_per_epoch
        left = min(left, tc.patience * evals - bad_epochs
                   + max(0, (tc.min_epochs or 0) * evals - r - 1))
    left += tc.finetune_epochs
    eta = 0 if stop else left * metrics["epoch_seconds"]
    print(f"[train] report {r + 1}/{stage1} (epoch {metrics['epoch']}): dev score "
          f"{metrics['dev_score']:.4f}, best {metrics['best_dev_score']:.4f}, "
          f"{metrics['epoch_seconds']:.0f} s" + (", patience reached" if stop else
                                                  f"; at most {left} more, about "
                                                  f"{duration(eta)} at this pace"), flush=True)


# ---------------------------------------------------------------------------------------------
# 5. stage 2

def run_stage2(w: Worker, progress: Progress, data: Batches, stage1: int, report: "Reporter",
               prepare: Prepare | None = None) -> None:
    """MKD's stage 2 (``train.finetune_epochs`` > 0): each task fine-tunes its own copy of the
    student (shared layers + its head) on its transfer set alone, one pass per epoch; reported
    as epochs after stage 1's ``stage1`` reports, metrics per task as before."""
    tc = w.tc
    if tc.finetune_epochs <= 0:
        return
    per_task = finetune_copies(unwrap(w.model), w.specs, tc, prepare, progress.per_task,
                               progress.optimizers)
    for r in range(max(progress.start, stage1), stage1 + tc.finetune_epochs):
        epoch = stage1 // tc.evals_per_epoch + r - stage1  # stage 1 may have stopped early
        t0 = time.time()
        losses = {}
        for t, (m, opt) in per_task.items():
            n = max(1, math.ceil(data.sizes[t] / (tc.batch_size * w.world)))  # one pass
            losses[t] = train_steps(m, opt, data.streams, [t] * min(n, tc.steps_per_epoch or n),
                                    w.specs, tc, w.precision)
        for lab in data.labels.values():
            lab.flush()
        scores = evaluate_per_task({t: unwrap(m) for t, (m, _) in per_task.items()}, w.dev,
                                   w.specs)
        metrics = {"epoch": epoch + 1, "stage": 2,
                   "train_loss": float(np.mean(list(losses.values()))),
                   **{f"{t}_train_loss": v for t, v in losses.items()},
                   "epoch_seconds": time.time() - t0, **scores, **w.probe,
                   **merge_stats(data.labels)}
        progress.best = max(progress.best, metrics["dev_score"])
        metrics["best_dev_score"] = progress.best
        report(r, metrics, {"best": progress.best, "bad_epochs": progress.bad_epochs,
                            "stage1_reports": stage1,
                            "done": r + 1 == stage1 + tc.finetune_epochs},
               per_task={t: m for t, (m, _) in per_task.items()},
               resume=resume_state(data.streams, {t: o for t, (_, o) in per_task.items()}))


def finetune_copies(joint, specs: dict[str, TaskSpec], tc, prepare: Prepare | None = None,
                    resumed: dict[str, dict] | None = None,
                    optimizers: dict[str, dict] | None = None) -> dict[str, tuple]:
    """Stage 2: per task, a copy of the jointly distilled student (or its checkpointed state,
    wrapped by ``prepare`` for several workers) and an optimizer over its parameters (fresh, or
    its checkpointed state)."""
    out = {}
    for t in specs:
        m = copy.deepcopy(joint)
        if resumed and t in resumed:
            m.load_state_dict(resumed[t])
        if prepare is not None:
            m = prepare(m, True)
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


# ---------------------------------------------------------------------------------------------
# each report

class Reporter:
    """The report step. ``reporter(r, metrics, state, ...)`` logs report ``r`` (0-based; the
    epoch when there is one report per epoch) to the MLflow run (rank 0, as step ``r + 1``),
    writes its checkpoint (rank 0) and hands both to ``sink``, with ``report`` = ``r + 1`` in
    the metrics (1-based: the clock of Tune's early stopping, which a resumed run carries on
    where Tune's own iteration count would start again)."""

    def __init__(self, w: Worker, sink, client=None, run_id: str | None = None):
        self.w, self.sink, self.client, self.run_id = w, sink, client, run_id

    def __call__(self, r: int, metrics: dict, state: dict, optimizer=None,
                 per_task: dict | None = None, resume: dict | None = None) -> None:
        if self.client is not None:
            from orchestrator.runtime.tracking import log_metrics
            # the scores first: MLflow lists a run's metrics in the order first logged
            first = ("best_dev_score", "dev_score", "latency_ms")
            log_metrics(self.client, self.run_id, {**{k: metrics[k] for k in first
                                                      if k in metrics}, **metrics}, step=r + 1)
        metrics = {**metrics, REPORT: r + 1}
        with tempfile.TemporaryDirectory() as d:
            if self.w.rank != 0:
                self.sink.keep(metrics, None, r)
                return
            write_checkpoint(Path(d), self.w, r, metrics, state, optimizer, per_task, resume)
            self.sink.keep(metrics, Path(d), r)
        self.sink.send(metrics)


def write_checkpoint(d: Path, w: Worker, r: int, metrics: dict, state: dict, optimizer=None,
                     per_task: dict | None = None, resume: dict | None = None) -> None:
    """Report ``r``'s checkpoint in ``d``: the student (``save_student``'s files), in stage 2
    each task's own student (``model-<task>.safetensors``), stage 1's optimizer, ``resume.pt``
    (:func:`resume_state`), ``train_state.json`` (``state`` and the report) and the metrics."""
    save_student(w.model, d, w.cfg, w.meta, w.bundle,
                 {"finetuned_tasks": sorted(per_task)} if per_task else None)
    if per_task:  # stage 2: each task's own fine-tuned student
        from safetensors.torch import save_file
        for t, m in per_task.items():
            save_file({k: v.detach().cpu().contiguous() for k, v in unwrap(m).state_dict().items()},
                      str(d / ckpt.task_model(t)))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), d / ckpt.OPTIMIZER)
    if resume is not None:
        torch.save(resume, d / ckpt.RESUME)
    (d / ckpt.STATE).write_text(json.dumps({"report": r, **state}))
    (d / ckpt.METRICS).write_text(json.dumps(metrics))  # last: it marks the directory complete


class ToTrain:
    """Where a Ray Train worker's reports go: to Train, rank 0's with its checkpoint (Train keeps
    it; a search's trial gets the metrics through ``TuneReportCallback``)."""

    def keep(self, metrics: dict, ckpt_dir: Path | None, r: int) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=None if ckpt_dir is None else
                         ray.train.Checkpoint.from_directory(str(ckpt_dir)))

    def send(self, metrics: dict) -> None:
        pass  # gone with the checkpoint


class InProcess:
    """Where the reports of a student trained in the caller's own process (local mode) go: the
    checkpoint to ``checkpoints`` (its path joins the metrics), then the metrics to
    ``report_fn``; by default to Tune in a Tune trial (a search's), else to Ray Train's local
    mode (a report's own process)."""

    def __init__(self, checkpoints: TrialCheckpoints, report_fn: Callable[[dict], None] | None = None):
        self.checkpoints, self.report_fn = checkpoints, report_fn

    def keep(self, metrics: dict, ckpt_dir: Path | None, r: int) -> None:
        metrics["checkpoint_path"] = self.checkpoints.save(ckpt_dir, r,
                                                           metrics.get("dev_score", math.nan))

    def send(self, metrics: dict) -> None:
        if self.report_fn is not None:
            self.report_fn(metrics)
            return
        from ray.tune.trainable.trainable_fn_utils import _in_tune_session

        if _in_tune_session():  # in a Tune trial, ray.train's report and context are Tune's
            import ray.tune

            ray.tune.report(metrics)
        else:
            import ray.train

            ray.train.report(metrics)


# ---------------------------------------------------------------------------------------------
# the Ray side of the top function

def _rank_and_world() -> tuple[int, int]:
    import ray.train

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


@contextlib.contextmanager
def _latest_checkpoint(checkpoints: TrialCheckpoints | None) -> Iterator[Path | None]:
    """A local directory holding the checkpoint to resume from (a worker failure, a pause at a
    rung, a restored search or report), None for a fresh start: Train's, or in local mode the
    latest the trial's :class:`TrialCheckpoints` kept."""
    if checkpoints is not None:
        with checkpoints.local("latest") as d:
            yield d
        return
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        yield None
        return
    with ckpt.as_directory() as d:
        yield Path(d)


def _prepare_model(model, find_unused: bool):
    import ray.train.torch

    return ray.train.torch.prepare_model(
        model, parallel_strategy_kwargs={"find_unused_parameters": find_unused})


def _mlflow_client(rank: int, loop_cfg: dict):
    if rank != 0 or not loop_cfg.get("run_id"):
        return None
    from mlflow.tracking import MlflowClient

    return MlflowClient(loop_cfg["tracking_uri"])
