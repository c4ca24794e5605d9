"""The search: Ray Tune (Optuna + ASHA) over student trials, each a Ray Train run, recorded in MLflow.

Shape: a Tune *function* trainable per trial builds a ``TorchTrainer`` whose
workers report each epoch (or ``train.evals_per_epoch`` times per epoch); ``TuneReportCallback``
forwards those reports to Tune, so ASHA can stop bad trials early (``pareto_asha``: keeping each
rung's (score, latency) front, :mod:`orchestrator.search.pareto_asha`). When one teacher labels
every task, the driver starts one teacher pool for the whole search and hands its client to every
trial (transfer-set labels, and with ``train.soft_labels=on_demand`` the rows the workers reach as
they train: :mod:`orchestrator.teachers.on_demand_labels`). The driver owns the MLflow parent
run; each trial owns one child run, found again by its trial id when a trial is retried or a
search is resumed, so no run is lost or duplicated.
"""
from __future__ import annotations

import contextlib
import json
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from orchestrator.config import (ExperimentConfig, SearchConfig, objectives, one_teacher,
                                 trial_config, with_values)
from orchestrator.record import outcome
from orchestrator.runtime import faults, progress, tracking
from orchestrator.runtime.ray_runtime import (check_budget, check_shared_paths, check_storage,
                                              env_storage_path, init_ray, trial_resources)
from orchestrator.runtime.redact import has_secret, redact
from orchestrator.search import fingerprint
from orchestrator.stages.pipeline import TeacherRef, load_data, on_demand_labeler, prepare_bundle
from orchestrator.stages.preflight import check_inputs, preflight
from search_spaces.loader import SearchSpace
from tasks.data import TaskData
from tasks.metrics import trivial_score

OBJECTIVE_LATENCY = "latency_ms"


@dataclass
class SearchOutcome:
    name: str
    parent_run_id: str
    table: pd.DataFrame
    best: dict[str, Any]
    pareto: pd.DataFrame
    seconds: float


# ---------------------------------------------------------------------------------------------
# teachers

def ensure_teachers(cfg: ExperimentConfig, data, client, experiment_id: str,
                    log: Callable = print) -> dict[str, TeacherRef]:
    """Fine-tune (or reuse) one teacher per task and record each in its own MLflow run.
    With ``teacher.multitask`` and several tasks: one multi-task teacher (MKD), one head per task."""
    from orchestrator.stages.teacher import finetune_teacher
    from tasks.loaders import data_fingerprint

    if cfg.teacher.multitask and len(data) > 1:
        return ensure_multitask_teacher(cfg, data, client, experiment_id, log)
    refs = {}
    for name, d in data.items():
        dev = next(iter(d.dev.values()))
        res = finetune_teacher(cfg.teacher, d.task, d.train, dev, cfg.work_root,
                               data_fingerprint(d.train), log=log)
        refs[name] = TeacherRef(path=str(res.path), key=res.key, head=name,
                                max_length=cfg.teacher.max_length)
        _record_teacher(client, experiment_id, res, f"teacher-{name}", {"distillray.task": name},
                        {"teacher": vars(cfg.teacher.for_task(name)), "task": name,
                         "train_examples": len(d.train)})
    return refs


def ensure_multitask_teacher(cfg: ExperimentConfig, data, client, experiment_id: str,
                             log: Callable = print) -> dict[str, TeacherRef]:
    """Refine (or reuse) one multi-task teacher on every task of ``data`` (MKD), recorded in its
    own MLflow run; its heads serve the tasks."""
    from orchestrator.stages.multitask_teacher import refine_multitask_teacher

    res = refine_multitask_teacher(cfg.teacher, data, cfg.work_root, log=log)
    _record_teacher(client, experiment_id, res, f"teacher-mkd-{'-'.join(data)}",
                    {"distillray.task": ",".join(data), "distillray.multitask": "true"},
                    {"teacher": vars(cfg.teacher), "tasks": ",".join(data),
                     **{f"train_examples_{t}": len(d.train) for t, d in data.items()}})
    if cfg.teacher.refine_epochs > 0:
        return _refine_per_task(cfg, data, res, client, experiment_id, log)
    return {name: TeacherRef(path=str(res.path), key=res.key, head=name,
                             max_length=cfg.teacher.max_length) for name in data}


def _refine_per_task(cfg: ExperimentConfig, data, multitask, client, experiment_id: str,
                     log: Callable = print) -> dict[str, TeacherRef]:
    """``teacher.refine_epochs`` > 0: each task's copy of the multi-task teacher, fine-tuned on
    that task alone (MT-DNN's second stage), each recorded in its own MLflow run."""
    from orchestrator.stages.teacher import refine_settings, refine_task_teacher
    from tasks.loaders import data_fingerprint

    refs = {}
    for name, d in data.items():
        dev = next(iter(d.dev.values()))
        res = refine_task_teacher(cfg.teacher, d.task, d.train, dev, cfg.work_root,
                                  data_fingerprint(d.train), multitask, log=log)
        refs[name] = TeacherRef(path=str(res.path), key=res.key, head=name,
                                max_length=cfg.teacher.max_length)
        _record_teacher(client, experiment_id, res, f"teacher-mkd-refined-{name}",
                        {"distillray.task": name, "distillray.refined_from": multitask.key},
                        {"teacher": vars(refine_settings(cfg.teacher, name)), "task": name,
                         "refined_from": str(multitask.path), "train_examples": len(d.train)})
    return refs


def _record_teacher(client, experiment_id: str, res, name: str, tags: dict[str, str],
                    params: dict[str, Any]) -> None:
    """One MLflow run per teacher (by its key, once): settings, dev metrics, fine-tuning time
    and the saved teacher as artifacts."""
    if tracking.find_runs(client, experiment_id, {tracking.TAG_KIND: "teacher",
                                                  "distillray.teacher_key": res.key}):
        return
    rid = tracking.start_run(client, experiment_id, name, {
        tracking.TAG_KIND: "teacher", "distillray.teacher_key": res.key, **tags})
    tracking.log_params(client, rid, params)
    tracking.log_metrics(client, rid, {f"dev_{k}": v for k, v in res.metrics.items()}
                         | {"finetune_seconds": res.seconds})
    client.log_artifacts(rid, str(res.path), "teacher")
    tracking.end_run(client, rid, True)


# ---------------------------------------------------------------------------------------------
# one trial

def _trial(sample: dict[str, Any], *, run_cfg: ExperimentConfig, space: SearchSpace,
           data, teachers: dict[str, TeacherRef], parent_run_id: str, experiment_id: str,
           uri: str, storage_path: str, search_name: str, labeler=None) -> None:
    """One trial. ``labeler``: the client of the search's teacher pool (None: several teachers,
    each trial starts its own pools)."""
    import ray.tune
    from mlflow.tracking import MlflowClient

    from orchestrator.training.distill import distill_one

    started = time.time()  # this life of the trial (a resume starts another)
    cfg = trial_config(run_cfg, space, sample)
    trial_id = ray.tune.get_context().get_trial_id()
    client = MlflowClient(uri)
    existing = tracking.find_runs(client, experiment_id, {tracking.TAG_SEARCH: search_name,
                                                          tracking.TAG_TRIAL: trial_id})
    if existing and existing[0].info.status == "FINISHED":
        # finished before a killed driver's last Tune snapshot recorded it: report, don't re-run
        _replay_finished(existing[0])
        return
    if existing:  # a retry or a resumed search: continue the same child run
        run_id = existing[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "distillray.attempts",
                       str(int(existing[0].data.tags.get("distillray.attempts", "1")) + 1))
        if existing[0].info.status in ("RUNNING", "KILLED"):
            # stopped from outside mid-run (its driver died, or the scheduler paused it at a
            # rung): Train resumes the checkpoint of its last report
            client.set_tag(run_id, "distillray.resumed", "true")
    else:
        run_id = tracking.start_run(
            client, experiment_id, tracking.trial_run_name(_trial_number(
                client, experiment_id, search_name), cfg),
            {tracking.TAG_KIND: "trial", tracking.TAG_SEARCH: search_name,
             tracking.TAG_TRIAL: trial_id, "distillray.attempts": "1"}, parent_run_id)
        tracking.log_params(client, run_id, {**{f"sampled.{k.rstrip('#')}": v for k, v in sample.items()},
                                             **cfg.to_dict()})
    # the bundle's figures are logged once the student has reported: a run's first metrics come
    # first in MLflow's list, and its comparison pages default to that list's first (dev scores)
    stats: dict[str, float] = {}
    try:
        bundle = prepare_bundle(cfg, data, teachers, pool=labeler)
        stats.update({**{f"transfer_size_{t}": n for t, n in bundle.transfer_sizes.items()},
                      "transfer_size": sum(bundle.transfer_sizes.values()),
                      "bundle_reused": float(bundle.reused), **bundle.label_stats})
        client.set_tag(run_id, "distillray.bundle", bundle.key)
        # the teacher pool the workers label from: None unless soft_labels=on_demand
        with on_demand_labeler(cfg, teachers, labeler) as on_demand:
            student = distill_one(cfg, bundle.path, run_id=run_id, tracking_uri=uri,
                                  storage=storage_path, name=f"{search_name}-{trial_id}",
                                  labeler=on_demand, started_at=started)
        tracking.log_metrics(client, run_id, stats)
        stats.clear()
        with student.checkpoint_dirs() as (latest, best):
            outcome.log_checkpoint_dirs(client, run_id, latest, best)
        tracking.end_run(client, run_id, True)
    except BaseException as e:  # noqa: BLE001 - record, then let Tune retry or fail the trial
        if stats:
            tracking.log_metrics(client, run_id, stats)
        if _stopped_by_scheduler(e):  # ASHA stopped it: KILLED, as _settle_child_runs marks it
            # (status only: the driver may tag this run at the same moment, and two inserts of
            # one tag collide in the store)
            client.set_terminated(run_id, "KILLED")
        else:
            tracking.end_run(client, run_id, False,
                             f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        raise


def _trial_number(client, experiment_id: str, search_name: str) -> int:
    """1 + the search's trial runs so far: the number in a trial's run name (two trials that
    start at the same moment may share one; the trial id tag stays the key)."""
    return 1 + len(tracking.find_runs(client, experiment_id, {tracking.TAG_SEARCH: search_name,
                                                               tracking.TAG_KIND: "trial"}))


def _stopped_by_scheduler(e: BaseException) -> bool:
    """Tune stopping (or pausing) a trial kills its Train controller on purpose; on a multi-node
    cluster the trial often sees that as an ActorDiedError (exit type INTENDED_USER_EXIT) before
    it dies. A student training in the trial's own process (local mode) is ended by Tune's report
    call raising SystemExit in it."""
    from ray.exceptions import ActorDiedError

    return isinstance(e, SystemExit) or (isinstance(e, ActorDiedError) and "INTENDED" in str(e))


def _replay_finished(run) -> None:
    """Hand Tune the last value of each metric a finished child run logged, so the restored trial
    completes with its real outcome (for the searcher and the results) without training again."""
    import ray.tune

    metrics = {k: v for k, v in run.data.metrics.items() if not k.startswith("final_")}
    ray.tune.report({**metrics, "replayed_from_mlflow": 1.0})


# ---------------------------------------------------------------------------------------------
# the search

def run_search(cfg: ExperimentConfig, space: SearchSpace, overrides: dict[str, Any] | None = None,
               address: str | None = None, resume: bool = True, log: Callable = print) -> SearchOutcome:
    from mlflow.tracking import MlflowClient
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from orchestrator.search.pareto_asha import CohortLimiter

    t0 = time.time()
    overrides = dict(overrides or {})
    s = cfg.search
    work_root = Path(cfg.work_root).resolve()
    cfg = with_values(cfg, {"work_root": str(work_root)})
    overrides["work_root"] = str(work_root)
    uri = tracking.resolve_uri(cfg.tracking.uri)
    # every input (tasks and data files, teacher, embeddings, NLTK data, space, work root,
    # tracking store) checked before Ray starts or a teacher trains; then the data itself
    check_inputs(cfg, space, log=log)
    data = load_data(cfg)
    preflight(cfg, space, data)  # mixture, student vs base model: before any teacher trains
    # unreachable storage, missing teacher resources, paths some node cannot see: fail here,
    # before any stage that would wait
    storage = check_storage(s.storage_path or env_storage_path() or str(work_root / "tune"))
    # resume only what matches: the same config, space and data as the search was started with
    fp = fingerprint.search_fingerprint(cfg, space, data)
    if resume:
        fingerprint.check_unchanged(s.name, fingerprint.load_saved(storage, s.name), fp,
                                    f"its Tune state in {storage}")
    resources = init_ray(address, log=log)
    check_budget(cfg, resources, log=log)
    check_shared_paths({"work_root": str(work_root), "search.storage_path": storage}, uri, log=log)
    log(f"[mlflow] tracking store: {redact(uri)}  (UI: "
        f"{redact(uri) if uri.startswith(('http://', 'https://')) else 'distillray ui'})")

    client = MlflowClient(uri)
    exp_id = tracking.experiment_id_for(client, cfg)
    if resume:  # the parent run may outlive the Tune state (another storage path)
        for run in tracking.find_runs(client, exp_id, {tracking.TAG_KIND: "search",
                                                       tracking.TAG_SEARCH: s.name})[:1]:
            fingerprint.check_unchanged(s.name, fingerprint.from_parent_run(client, run, fp), fp,
                                        f"its MLflow parent run {run.info.run_id}")
    teachers = ensure_teachers(cfg, data, client, exp_id, log)
    preflight(cfg, space, data, teachers)  # heads and layers of the teachers actually used
    floor = score_floor(s, data)
    with _search_pool(cfg, teachers, log) as labeler:  # None: a pool per trial
        if not any(space.searches(k) for k in ("augment.", "student.embeddings",
                                                "student.max_length", "student.arch")):
            prepare_bundle(cfg, data, teachers, log, labeler)  # shared by every trial: build once

        parent = _parent_run(client, exp_id, s.name, resume)
        fingerprint.save(storage, s.name, fp)
        fingerprint.record(client, parent, fp)
        tracking.log_params(client, parent, {"search": vars(s), "space_file": space.path,
                                             # the trials' params to compare (sampled.<key>)
                                             "searched": ",".join(p.key for p in space.params),
                                             "searcher": "optuna-tpe",
                                             "startup_order": s.startup_order,
                                             "startup_rung": s.startup_rung,
                                             "scheduler": s.scheduler})
        tracking.log_dict_artifact(client, parent,
                                   {"space": {p.key: vars(p) for p in space.params},
                                    "config": cfg.to_dict()}, "search_space.yaml")

        trainable = tune.with_parameters(
            _trial, run_cfg=cfg, space=space, data=data, teachers=teachers,
            parent_run_id=parent, experiment_id=exp_id, uri=uri, storage_path=storage,
            search_name=s.name, labeler=labeler)
        trainable = tune.with_resources(trainable, trial_resources(cfg))
        path = f"{storage.rstrip('/')}/{s.name}"
        _snapshot_often()
        verbose, callbacks = tune_output(s, cfg.train, log)
        if resume and tune.Tuner.can_restore(path):
            log(f"[tune] resuming search {s.name} from {path}")
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
            _restored_output(tuner, verbose, callbacks)
        else:
            cohort = synchronous_cohort(s)
            searcher = make_searcher(s, space, overrides, data, cfg.train.seed, log)
            searcher = (CohortLimiter(searcher, s.max_concurrent, cohort) if cohort else
                        ConcurrencyLimiter(searcher, max_concurrent=s.max_concurrent))
            # rungs saved beside Tune's state, not in its folder: a restored driver copies that
            # folder as it was at the restore and syncs the copy back over it, so a file written
            # there would go back to its old content. A fresh name per fresh search, so a restored
            # search (its scheduler unpickled with this path) reads its own rungs and no other's
            scheduler = make_scheduler(s, total_reports(cfg.train), floor, scheduler_state_path(
                storage, s.name, uuid.uuid4().hex[:8]))
            log(f"[tune] early stopping: {describe_scheduler(s, floor)}")
            tuner = tune.Tuner(
                trainable,
                # a student trained in the trial's process leaves nothing running when its
                # trial pauses or stops, so the next trial can take over the process (no new
                # actor, modules already imported); Train's runs would keep theirs busy
                tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                            num_samples=s.num_samples,
                                            reuse_actors=cfg.train.num_workers == 0),
                run_config=tune.RunConfig(
                    name=s.name, storage_path=storage, verbose=verbose, callbacks=callbacks,
                    failure_config=tune.FailureConfig(max_failures=s.max_failures)))
        results = tuner.fit()
    table = results_table(results, s.metric, cfg.train.epochs)
    lost = _settle_child_runs(client, exp_id, s.name, parent, table)
    if lost:
        client.set_tag(parent, "distillray.lost_trials", ",".join(lost))
        log(f"[mlflow] {len(lost)} trial run(s) from before the interruption were lost with the "
            f"driver and drawn again: closed as failed and deleted from the experiment's view "
            f"(trials {', '.join(lost)}; `mlflow runs restore --run-id ID` brings one back)")
    best, pareto = summarize(client, parent, table, s.metric, s.mode, floor)
    if best:  # the winner's sampled values beside the parent's best_<metric>
        tracking.log_params(client, parent, {f"best.{k}": v for k, v in
                                             (best.get("config") or {}).items()})
    version = None
    if best and s.register_model:
        version = _register(client, uri, parent, exp_id, s.name, s.register_model, best, data, log)
    errors = [r for r in results if r.error]
    tracking.end_run(client, parent, len(errors) < len(table) or not len(table))
    log_table(table, s.metric, log)
    if best:
        log(f"[best] trial {best['trial_id']}: {s.metric}={best.get(s.metric, float('nan')):.4f} "
            f"config={json.dumps(best.get('config', {}), default=str)}")
    log(next_steps(s.name, uri, cfg.tracking.experiment, exp_id, bool(best),
                   f"{s.register_model}/{version}" if version else None, pair=_is_pair(data)))
    return SearchOutcome(s.name, parent, table, best, pareto, time.time() - t0)


def make_searcher(s: SearchConfig, space: SearchSpace, overrides: dict[str, Any],
                  data: dict[str, TaskData], seed: int, log: Callable | None = None):
    """Optuna's TPE over ``space`` (both objectives when there are two: a Pareto front), its
    first ``search.startup_trials`` draws random; with ``search.startup_order=cheapest_first``
    those run in order of estimated training work (:mod:`orchestrator.search.startup_order`)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from orchestrator.search.startup_order import CheapestFirst, TrainingWork, startup_batch

    metrics, modes = zip(*objectives(s))
    searcher = OptunaSearch(
        space=space.define_by_run(),
        metric=list(metrics) if len(metrics) > 1 else metrics[0],
        mode=list(modes) if len(modes) > 1 else modes[0],
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.startup_trials))
    batch = startup_batch(s.startup_trials, s.num_samples)
    if s.startup_order == "drawn" or batch < 2:
        return searcher
    tasks = {name: (len(d.train), d.task.is_pair, d.task.num_outputs) for name, d in data.items()}
    return CheapestFirst(searcher, batch, TrainingWork(space, overrides, tasks), log)


def score_floor(s: SearchConfig, data: dict[str, TaskData]) -> float | None:
    """``search.min_score``, else the dev_score of the trivial predictor (mean over tasks of each
    task's first dev split, as dev_score is) when dev_score is the score; else None (no floor)."""
    if s.min_score is not None:
        return float(s.min_score)
    if s.metric != "dev_score":
        return None
    scores = []
    for d in data.values():
        split = d.task.dev_splits[0] if d.task.dev_splits[0] in d.dev else next(iter(d.dev))
        scores.append(trivial_score(d.task, [e.label for e in d.train],
                                    [e.label for e in d.dev[split]]))
    return float(np.mean(scores))


def scheduler_state_path(storage: str, name: str, tag: str) -> str:
    """Where a search's Pareto ASHA rungs are saved: ``<storage>/<name>.scheduler/``."""
    return f"{storage.rstrip('/')}/{name}.scheduler/pareto_asha-{tag}.json"


def synchronous_cohort(s: SearchConfig) -> int:
    """The trials that meet the first early-stopping rung together (``search.startup_rung``):
    the random startup draws; 0 when they meet it one by one."""
    from orchestrator.search.startup_order import startup_batch

    if s.startup_rung != "synchronous" or s.scheduler != "pareto_asha":
        return 0
    return startup_batch(s.startup_trials, s.num_samples)


def make_scheduler(s: SearchConfig, reports: int, floor: float | None,
                   state_path: str | None = None):
    """Tune's trial scheduler. Time is counted in reports (``train.evals_per_epoch`` per epoch,
    the trial's own count, carried on when it resumes); max_t is one past the last, so early
    stopping never kills a trial at its final report and the trial can still log its student and
    close its MLflow run."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from orchestrator.search.pareto_asha import ParetoASHA
    from orchestrator.training.train import REPORT

    if s.scheduler == "pareto_asha":
        (score, score_mode), (cost, cost_mode) = objectives(s)
        return ParetoASHA(score, cost, score_mode=score_mode, cost_mode=cost_mode,
                          time_attr=REPORT, max_t=reports + 1,
                          grace_period=s.grace_period, reduction_factor=s.reduction_factor,
                          floor=floor, state_path=state_path, cohort=synchronous_cohort(s),
                          max_concurrent=s.max_concurrent)
    if s.scheduler == "asha":
        return ASHAScheduler(metric=s.metric, mode=s.mode, time_attr=REPORT,
                             max_t=reports + 1, grace_period=s.grace_period,
                             reduction_factor=s.reduction_factor)
    return FIFOScheduler()


def describe_scheduler(s: SearchConfig, floor: float | None) -> str:
    if s.scheduler == "none":
        return "none (every trial runs to its last epoch)"
    rule = (f"top 1/{s.reduction_factor} by {s.metric} at each rung (first rung: report "
            f"{s.grace_period})")
    if s.scheduler == "pareto_asha":
        beyond = "" if floor is None else f" with {s.metric} beyond {floor:.4g}"
        cohort = synchronous_cohort(s)
        sync = (f"; the first {cohort} trials meet the first rung together (each waits there "
                "for the others, then the kept ones resume)" if cohort else "")
        return (f"{rule}, or on the rung's {' vs '.join(m for m, _ in objectives(s))} "
                f"front{beyond}{sync}")
    if len(s.objectives) > 1:
        rule += " alone (search.scheduler=pareto_asha also keeps each rung's objectives front)"
    return rule


@contextlib.contextmanager
def _search_pool(cfg: ExperimentConfig, teachers: dict[str, TeacherRef], log: Callable):
    """One teacher pool for the whole search when one teacher labels every task: loaded once,
    shared by every trial (and by concurrent trials: one GPU teacher serves them all). Yields its
    picklable client, or None (several teachers: each trial starts its own pools)."""
    from orchestrator.teachers.teacher_pool import TeacherPool

    if not one_teacher(cfg):
        yield None
        return
    with TeacherPool(next(iter(teachers.values())).path, cfg.pool,
                     probe_root=cfg.work_root) as pool:
        log(f"[pool] {cfg.pool.num_actors} teacher actor(s) serve every trial of the search "
            f"({pool.info['device']}, {pool.actor_precision}, {cfg.pool.cpus_per_actor:g} CPU "
            "each)")
        yield pool.client()


def _register(client, uri: str, parent: str, exp_id: str, name: str, model_name: str,
              best: dict, data, log: Callable) -> str | None:
    """Log the best student as an MLflow model (signature, input example) and register it."""
    from orchestrator.record.registry import NotFoundError, register_best

    runs = tracking.find_runs(client, exp_id, {tracking.TAG_SEARCH: name,
                                               tracking.TAG_TRIAL: str(best["trial_id"])})
    if not runs:
        log(f"[registry] best trial {best['trial_id']} has no MLflow run; nothing registered")
        return None
    dev = next(iter(next(iter(data.values())).dev.values()))[:5]
    try:
        version, new = register_best(client, uri, parent, runs[0].info.run_id, model_name,
                                     [(e.text_a, e.text_b) for e in dev])
    except NotFoundError as e:  # e.g. a search interrupted before its best trial saved it
        log(f"[registry] nothing registered: {e}")
        return None
    log(f"[registry] best student {'registered' if new else 'already registered'} as "
        f"{model_name} version {version}")
    return version


def _is_pair(data) -> bool:
    return any(d.task.is_pair for d in data.values())


def next_steps(search: str, uri: str, experiment: str, exp_id: str, has_best: bool,
               registered: str | None, pair: bool = False, port: int = 5001) -> str:
    """What to do once a search has ended, as commands with this search's names filled in: look
    at the runs, print and export the best student, serve the registered model."""
    import shlex
    import shutil
    import sys

    default_uri = uri == tracking.resolve_uri(None) and not uri.startswith(("http", "postgres"))
    # a store whose URI holds a password is never printed on a command line (shell history,
    # `ps`): the commands read it from $MLFLOW_TRACKING_URI instead
    secret = has_secret(uri)
    store = "" if default_uri or secret else f" --tracking-uri {shlex.quote(uri)}"
    exp = "" if experiment == "distillray" else f" --experiment {shlex.quote(experiment)}"
    name = shlex.quote(search)
    lines = ["", "[next] what to do now:"]
    if secret:
        lines.append(f"  (export MLFLOW_TRACKING_URI={shlex.quote(redact(uri))} with the real "
                     "password first: these commands read the store from it)")
    if uri.startswith(("http://", "https://")):
        lines.append(f"  the runs:      {tracking.runs_page(redact(uri).rstrip('/'), exp_id)}")
    else:
        lines.append(f"  the runs:      distillray ui{store}   # then "
                     f"{tracking.runs_page('http://127.0.0.1:5000', exp_id)}")
    if has_best:
        lines.append(f"  best student:  distillray best --search {name}{store}{exp}")
        lines.append(f"  export it:     distillray export --search {name}{store}{exp} "
                     f"--out {shlex.quote('export-' + search)}   # TorchScript, ONNX, predict.py")
    if registered:
        env = "" if (uri.startswith(("http://", "https://")) and not store) or secret else \
            f"MLFLOW_TRACKING_URI={shlex.quote(uri)} "
        body = '{"dataframe_records": [{"text_a": "a gripping, funny film"' + \
            (', "text_b": "a funny film"' if pair else "") + '}]}'
        # mlflow serves through uvicorn, found on PATH: the environment's bin dir when not there
        bindir = str(Path(sys.executable).parent)
        if not (shutil.which("uvicorn") and shutil.which("mlflow")):
            env = f"PATH={shlex.quote(bindir)}:$PATH " + env
        lines.append(f"  serve it:      {env}mlflow models serve -m models:/{registered} "
                     f"--env-manager local --host 127.0.0.1 --port {port}")
        # the model needs only what its MLmodel lists (mlflow, onnxruntime, ...), not this repo
        lines.append(f"  or, anywhere:  {env}mlflow models serve -m models:/{registered} "
                     f"--env-manager uv --host 127.0.0.1 --port {port}   # a fresh environment")
        lines.append(f"  ask it:        curl -s http://127.0.0.1:{port}/invocations -H "
                     f"'Content-Type: application/json' -d '{body}'")
    elif has_best:
        lines.append("  register it:   rerun with --set search.register_model=NAME to serve it "
                     "with `mlflow models serve`")
    return "\n".join(lines)


def tune_output(s: SearchConfig, tc, log: Callable = print) -> tuple[int, list]:
    """Tune's verbosity and the callbacks that show the search. On a terminal, Tune's own
    output (verbose=1: its trial table every 30 s, each trial's config and result boxed). Off
    one (a log file), Tune silent (verbose=0) and :class:`TrialLines`: a line per trial start
    and end and a search line at most every 30 s, where every copy of Tune's table would stay
    in the file."""
    if progress.on_terminal():
        return 1, []
    from orchestrator.search.pareto_asha import rung_milestones
    from orchestrator.search.trial_lines import TrialLines

    reports = total_reports(tc)
    rungs = ([] if s.scheduler == "none" else
             [r for r in rung_milestones(s.grace_period, s.reduction_factor, reports + 1)
              if r < reports])
    return 0, [TrialLines(s.metric, s.mode, reports, rungs, log=log)]


def _restored_output(tuner, verbose: int, callbacks: list) -> None:
    """A restored search keeps the run config it was started with (Tune reads it back from its
    state): give it this call's verbosity and trial lines, so a search started on a terminal and
    resumed into a log file (or the other way round) shows what this call's output suits. Ray
    2.60 restores no run config from arguments; this goes through the restored tuner's
    ``get_run_config()``, and a Ray without it keeps the saved output."""
    from orchestrator.search.trial_lines import TrialLines

    local = getattr(tuner, "_local_tuner", None)
    run_config = local.get_run_config() if hasattr(local, "get_run_config") else None
    if run_config is None:
        return
    run_config.verbose = verbose
    run_config.callbacks = [c for c in (run_config.callbacks or [])
                            if not isinstance(c, TrialLines)] + list(callbacks)


def _snapshot_often(seconds: float = 2.0) -> None:
    """Tune snapshots its trials (what a restore resumes) at most every 10 s by default; a driver
    killed in between loses the trials it started since, and their child runs end up closed as
    interrupted. Snapshot every few seconds instead, unless $TUNE_GLOBAL_CHECKPOINT_S says. Only
    a new search reads it: a restored one keeps the period saved in its state (Ray 2.60)."""
    import os

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", f"{seconds:g}")


def _parent_run(client, exp_id: str, name: str, resume: bool) -> str:
    if resume:
        runs = tracking.find_runs(client, exp_id, {tracking.TAG_KIND: "search", tracking.TAG_SEARCH: name})
        if runs:
            rid = runs[0].info.run_id
            client.update_run(rid, status="RUNNING")
            return rid
    return tracking.start_run(client, exp_id, name, {tracking.TAG_KIND: "search",
                                                      tracking.TAG_SEARCH: name})


def total_reports(tc) -> int:
    """Reports a trial makes when it runs to the end: ``evals_per_epoch`` per stage-1 epoch,
    one per stage-2 (MKD fine-tuning) epoch."""
    return tc.epochs * tc.evals_per_epoch + tc.finetune_epochs


def results_table(results, metric: str, max_epochs: int) -> pd.DataFrame:
    """One row per trial; a trial that ended before its epoch budget was stopped early (ASHA or
    patience)."""
    rows = []
    for r in results:
        m = r.metrics or {}
        best = m.get(f"best_{metric}", m.get(metric))  # the loop reports its running best
        budget = int((r.config or {}).get("train.epochs", max_epochs))
        status = "ERROR" if r.error else ("DONE" if m.get("epoch", 0) >= budget else "STOPPED_EARLY")
        rows.append({
            "trial_id": m.get("trial_id"),
            "status": status,
            "epochs": m.get("epoch"), metric: m.get(metric), f"best_{metric}": best,
            OBJECTIVE_LATENCY: m.get(OBJECTIVE_LATENCY), "non_embedding_params": m.get("non_embedding_params"),
            "config": {k.rstrip("#"): v for k, v in (r.config or {}).items()},
            "error": str(r.error).splitlines()[0][:200] if r.error else None,
            "checkpoint_path": m.get("checkpoint_path"),
        })
    return pd.DataFrame(rows)


def _settle_child_runs(client, exp_id: str, name: str, parent: str,
                       table: pd.DataFrame) -> list[str]:
    """Trials ASHA stopped were killed mid-run or while paused at a rung: close their child runs
    as stopped, not 'running', and tag them early-stopped (or close them as finished, with their
    student, when the stop came at their last epoch). A running run whose trial this search does
    not know was started by a driver that died before Tune recorded the trial: the restored
    searcher drew its slot again (see ``orchestrator.search.pareto_asha``), so it is closed as
    failed and interrupted and soft-deleted, leaving one visible child run per trial of the search (MLflow
    keeps its data; ``mlflow runs restore`` brings it back); so is one that was paused at a rung
    (KILLED) when the driver died. Only this parent run's children are looked at: an earlier
    search of the same name (``--no-resume``) keeps its runs. Returns the lost trials' ids."""
    from ray.train import Checkpoint

    known = set(table["trial_id"].dropna().astype(str)) if "trial_id" in table else set()
    lost: list[str] = []
    for run in tracking.find_runs(client, exp_id, {tracking.TAG_SEARCH: name, tracking.TAG_KIND: "trial",
                                                   tracking.TAG_PARENT: parent},
                                  statuses=["RUNNING", "SCHEDULED", "KILLED"]):
        trial = run.data.tags.get(tracking.TAG_TRIAL)
        if trial in known:
            row = table[table["trial_id"].astype(str) == trial].iloc[0]
            if row["status"] == "DONE" and row.get("checkpoint_path"):
                # ASHA stopped it at a rung that was also its last epoch: it did finish
                outcome.log_final_metrics(client, run.info.run_id, run.data.metrics)
                with Checkpoint(row["checkpoint_path"]).as_directory() as d:
                    outcome.log_student(client, run.info.run_id, Path(d))
                outcome.log_learning_curve(client, run.info.run_id)
                client.set_terminated(run.info.run_id, "FINISHED")
            else:
                if "distillray.early_stopped" not in run.data.tags:
                    client.set_tag(run.info.run_id, "distillray.early_stopped", "true")
                if run.info.status != "KILLED":
                    client.set_terminated(run.info.run_id, "KILLED")
        else:
            client.set_tag(run.info.run_id, "distillray.interrupted", "true")
            tracking.end_run(client, run.info.run_id, False,
                             "interrupted: the search driver stopped before Tune recorded this "
                             "trial, so the resumed search could not continue it; its slot "
                             "was drawn again")
            client.delete_run(run.info.run_id)
            lost.append(trial)
    return lost


def pareto_front(df: pd.DataFrame, score: str, cost: str, floor: float | None = None,
                 score_mode: str = "max") -> pd.DataFrame:
    """Rows whose score beats ``floor`` (the trivial predictor's) that no other such row beats on
    both score and cost (lower is better)."""
    ok = df.dropna(subset=[score, cost])
    sign = 1.0 if score_mode == "max" else -1.0
    if floor is not None:
        ok = ok[sign * ok[score] > sign * floor]
    sc, co = sign * ok[score], ok[cost]
    keep = [i for i in ok.index
            if not ((sc >= sc[i]) & (co <= co[i]) & ((sc > sc[i]) | (co < co[i]))).any()]
    return ok.loc[keep].sort_values(cost)


def summarize(client, parent: str, table: pd.DataFrame, metric: str, mode: str,
              floor: float | None = None) -> tuple[dict, pd.DataFrame]:
    if table.empty:
        return {}, table
    col = f"best_{metric}"
    ok = table.dropna(subset=[col])
    if ok.empty:
        return {}, ok
    # ties on the score (common on easy data) go to the faster student, then the trial id, so
    # the best trial does not depend on the order Tune lists the trials in (a resumed search
    # lists them differently, and would register another run's student)
    order = ok.assign(_lat=ok[OBJECTIVE_LATENCY].astype(float).fillna(np.inf),
                      _id=ok["trial_id"].astype(str))
    best_row = ok.loc[order.sort_values([col, "_lat", "_id"],
                                        ascending=[mode != "max", True, True]).index[0]]
    best = best_row.to_dict()
    best[metric] = best_row[col]
    client.set_tag(parent, "distillray.best_trial", str(best["trial_id"]))
    tracking.log_metrics(client, parent, {f"best_{metric}": float(best_row[col]),
                                          "trials": float(len(table)),
                                          "trials_stopped_early": float((table["status"] == "STOPPED_EARLY").sum()),
                                          "trials_failed": float((table["status"] == "ERROR").sum()),
                                          **({} if floor is None else {"min_score": floor})})
    pareto = pareto_front(ok, col, OBJECTIVE_LATENCY, floor, mode)
    faults.point("search_summary")
    tracking.log_dict_artifact(client, parent, {
        "best": {k: v for k, v in best.items()}, "min_score": floor,
        "pareto": pareto.drop(columns=["config"]).to_dict(orient="records"),
        "trials": table.drop(columns=["config"]).to_dict(orient="records")}, "search_summary.json")
    _pareto_plot(client, parent, ok, pareto, col, floor)
    return best, pareto


def _pareto_plot(client, parent: str, ok: pd.DataFrame, pareto: pd.DataFrame, col: str,
                 floor: float | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = ok.dropna(subset=[OBJECTIVE_LATENCY])
    if d.empty:
        return
    size = d["non_embedding_params"].fillna(1.0).astype(float)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.scatter(d[OBJECTIVE_LATENCY], d[col], s=20 + 200 * size / max(1.0, size.max()), alpha=0.5,
               label="trials (size = non-embedding params)")
    p = pareto.sort_values(OBJECTIVE_LATENCY)
    ax.plot(p[OBJECTIVE_LATENCY], p[col], "r.-", label="Pareto front")
    if floor is not None:
        ax.axhline(floor, color="grey", ls="--", lw=0.8,
                   label="score floor (trivial predictor or search.min_score)")
    ax.set_xlabel("batch-1 latency (ms)")
    ax.set_ylabel(col)
    ax.legend(fontsize=7)
    outcome.log_figure(client, parent, fig, "pareto.png")


def log_table(table: pd.DataFrame, metric: str, log: Callable = print) -> None:
    if table.empty:
        log("[tune] no trials ran")
        return
    cols = ["trial_id", "status", "epochs", f"best_{metric}", OBJECTIVE_LATENCY, "non_embedding_params"]
    show = table[[c for c in cols if c in table]].copy()
    params = pd.DataFrame([{k: v for k, v in c.items()} for c in table["config"]])
    log("\n" + pd.concat([show, params], axis=1).to_string(index=False, float_format=lambda x: f"{x:.4g}"))
