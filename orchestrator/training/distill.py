"""The Ray TorchTrainer that runs the worker loop (:func:`worker.train_loop_per_worker`) for one
student."""
from __future__ import annotations

from pathlib import Path

from orchestrator.config import ExperimentConfig
from orchestrator.training.worker import train_loop_per_worker


def make_trainer(cfg: ExperimentConfig, bundle: str | Path, run_id: str | None,
                 tracking_uri: str | None, storage_path: str, name: str,
                 callbacks: list | None = None, tasks: list[str] | None = None, labeler=None,
                 started_at: float | None = None):
    """A TorchTrainer for one student: workers and resources from ``cfg.train``. ``tasks``: the
    bundle's tasks to train (default all). ``labeler``: the teacher pool's client for an
    on-demand bundle (:func:`pipeline.on_demand_labeler`). ``started_at``: when the caller's run
    began (``time.time()``); the first report of each start of the workers then holds
    ``startup_seconds``, the time until training began.

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
        train_loop_config={"experiment": cfg.to_dict(), "bundle": str(bundle), "run_id": run_id,
                           "tracking_uri": tracking_uri, "tasks": tasks, "labeler": labeler,
                           "started_at": started_at,
                           "checkpoints": {"storage": storage_path, "name": name} if local else None},
        scaling_config=scaling, run_config=run_config)
