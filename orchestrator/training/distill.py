"""One way to train a student: :func:`distill_one` runs the worker loop
(:func:`worker.train_loop_per_worker`) on Ray Train for one student and returns how it ended. The
search's trials, the report's rows and the benchmarks all train through it.

A run is named: its checkpoints lie under ``<storage>/<name>``, and a later call with the same
name resumes from the last of them (a killed report, a trial paused at a rung, a restored
search); a run whose last checkpoint is marked done trains nothing.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from orchestrator.config import ExperimentConfig, resolved_embeddings
from orchestrator.training.trial_checkpoints import TrialCheckpoints
from orchestrator.training.worker import train_loop_per_worker


@dataclass
class Distilled:
    """How one student's training ended."""

    result: Any  # Ray Train's Result: the last report's metrics, the kept checkpoints
    storage: str
    name: str
    local: bool  # trained in the caller's own process (train.num_workers: 0)

    @contextlib.contextmanager
    def checkpoint_dirs(self) -> Iterator[tuple[Path | None, Path | None]]:
        """Local directories holding the last report's checkpoint and the best one by dev
        score (None where there is none; remote storage: temporary copies, gone on exit)."""
        with contextlib.ExitStack() as stack:
            if self.local:
                ck = TrialCheckpoints(self.storage, self.name)
                yield (stack.enter_context(ck.local("latest")),
                       stack.enter_context(ck.local("best")))
                return
            latest = self.result.checkpoint
            best = self.result.get_best_checkpoint("dev_score", "max") or latest
            yield tuple(None if c is None else Path(stack.enter_context(c.as_directory()))
                        for c in (latest, best))


def distill_one(cfg: ExperimentConfig, bundle: str | Path, *, storage: str, name: str,
                run_id: str | None = None, tracking_uri: str | None = None,
                tasks: list[str] | None = None, labeler=None, started_at: float | None = None,
                callbacks: list | None = None, pause_after: int | None = None) -> Distilled:
    """Train one student on ``bundle`` as ``cfg`` says, as the Ray Train run ``name`` under
    ``storage``; raises what the training raised. ``run_id``: the MLflow run each report is
    logged to (at ``tracking_uri``). ``pause_after``: stop once that many reports are made,
    unfinished (a later call with the same ``name`` trains on from there). Other arguments as
    :func:`make_trainer`'s."""
    trainer = make_trainer(cfg, bundle, run_id, tracking_uri, storage, name, callbacks=callbacks,
                           tasks=tasks, labeler=labeler, started_at=started_at,
                           pause_after=pause_after)
    threads = torch.get_num_threads()
    try:
        result = trainer.fit()
    finally:  # local mode: the loop set this process's torch threads to the student's
        torch.set_num_threads(threads)
    if result.error:
        raise result.error
    return Distilled(result, storage, name, cfg.train.num_workers == 0)


def make_trainer(cfg: ExperimentConfig, bundle: str | Path, run_id: str | None,
                 tracking_uri: str | None, storage_path: str, name: str,
                 callbacks: list | None = None, tasks: list[str] | None = None, labeler=None,
                 started_at: float | None = None, pause_after: int | None = None):
    """A TorchTrainer for one student: workers and resources from ``cfg.train``. ``tasks``: the
    bundle's tasks to train (default all). ``labeler``: the teacher pool's client for an
    on-demand bundle (:func:`pipeline.on_demand_labeler`). ``started_at``: when the caller's run
    began (``time.time()``); the first report of each start of the workers then holds
    ``startup_seconds``, the time until training began.

    Inside a Tune trial the reports go to the trial: from Train's workers through
    ``TuneReportCallback``, added here. ``train.num_workers: 0`` trains in this process (Ray
    Train's local mode): no controller or worker actors to start, and the checkpoints go to
    :class:`TrialCheckpoints` under ``storage_path/name``. The process holds the student's CPUs:
    a Tune trial reserves them (:func:`ray_runtime.trial_resources`) and its reports go to Tune
    directly; a report's own process trains one student at a time beside nothing else."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.trainable.trainable_fn_utils import _in_tune_session

    tc = cfg.train
    local = tc.num_workers == 0
    in_tune = _in_tune_session()
    callbacks = list(callbacks or [])
    if in_tune and not local:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.insert(0, TuneReportCallback())
    if local:
        _quiet_local_mode_note()
    scaling = ray.train.ScalingConfig(
        num_workers=tc.num_workers, use_gpu=tc.use_gpu and not local,
        resources_per_worker=None if local else
        {"CPU": tc.cpus_per_worker, **({"GPU": 1} if tc.use_gpu else {})})
    run_config = ray.train.RunConfig(
        name=name, storage_path=storage_path, callbacks=callbacks,
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute="dev_score", checkpoint_score_order="max"),
        failure_config=ray.train.FailureConfig(max_failures=1))
    return TorchTrainer(
        train_loop_per_worker,
        # the student records the embeddings file its bundle was built with (not "glove")
        train_loop_config={"experiment": resolved_embeddings(cfg).to_dict(),
                           "bundle": str(bundle), "run_id": run_id,
                           "tracking_uri": tracking_uri, "tasks": tasks, "labeler": labeler,
                           "started_at": started_at, "pause_after": pause_after,
                           "checkpoints": {"storage": storage_path, "name": name} if local else None},
        scaling_config=scaling, run_config=run_config)


class _LocalModeNote(logging.Filter):
    """Drops Ray Train's "Running in local mode ... please file a report" note, which it logs
    for every ScalingConfig with no workers: here local mode is the presets' choice, and the
    note came once per trial into a search's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Running in local mode")


def _quiet_local_mode_note() -> None:
    note = logging.getLogger("ray.train.v2.api.config")  # the module that logs it (Ray 2.60)
    if not any(isinstance(f, _LocalModeNote) for f in note.filters):
        note.addFilter(_LocalModeNote())
